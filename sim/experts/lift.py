"""Scripted expert for Lift: top-down grasp of the cube, yaw-aligned with its faces, then lift."""

from __future__ import annotations

import math

import numpy as np

from sim.experts.base import ScriptedExpert, Target, body_yaw, wrap_angle

_HOVER_M = 0.08  # approach from straight above so the open fingers never brush the cube
_LIFT_M = 0.15  # success needs 4 cm; lift well past it so the env terminates before the phase ends


class LiftExpert(ScriptedExpert):
    PHASES = ("hover", "descend", "grasp", "lift")

    def _cube(self) -> tuple[np.ndarray, float]:
        env = self.env.unwrapped_robosuite
        pos = self.body_pos(env.cube_body_id)
        # The cube looks the same every 90 degrees: take the face alignment needing the least wrist rotation.
        yaw = wrap_angle(body_yaw(self.body_quat(env.cube_body_id)), math.pi / 2)
        return pos, yaw

    def target(self, obs: dict[str, np.ndarray]) -> Target:
        cube, yaw = self._cube()
        if self.phase == "hover":
            return Target(cube + [0, 0, _HOVER_M], yaw, -1.0)
        if self.phase == "descend":
            return Target(cube, yaw, -1.0, pos_tol=0.006, max_speed=0.6, max_steps=40, jitter_axes=(0.5, 0.5, 0))
        if self.phase == "grasp":
            self.memory.setdefault("grasp_pos", self.eef_pos())
            return Target(self.memory["grasp_pos"], self.eef_yaw(), 1.0, wait_steps=8)
        grasp = self.memory["grasp_pos"]
        return Target(grasp + [0, 0, _LIFT_M], self.eef_yaw(), 1.0, pos_tol=0.01, max_steps=60)

    def next_phase(self, obs: dict[str, np.ndarray]) -> str:
        if self.phase == "lift":
            # Still here after lifting means the cube slipped: open and start over.
            self.memory.clear()
            return "hover"
        return super().next_phase(obs)
