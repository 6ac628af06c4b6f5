"""Scripted expert for PickPlaceCan: grasp the can from above, carry it over the bin wall, drop it in its
target quadrant, and retreat (success also requires the gripper to be away from the can)."""

from __future__ import annotations

import numpy as np

from sim.experts.base import ScriptedExpert, Target

_HOVER_M = 0.10  # above the can top before descending
_GRASP_DZ_M = 0.015  # grasp slightly above the can's centre so the palm clears its top
_CARRY_Z_M = 1.00  # transport height: the can's bottom (~7.5 cm below the grip site) clears the bin walls
_RELEASE_Z_M = 0.93  # open here: can bottom ~5 cm above the bin floor, a short drop that keeps it upright
_RETREAT_Z_M = 1.02
# The target quadrant's far corner (x 0.3, y 0.5) is at the edge of the Panda's reach and the arm stalls there,
# so release in the quadrant's near part: this many metres inside its edges nearest the robot (x, y).
_NEAR_EDGE_MARGIN_M = np.array([0.05, 0.06])


class PickPlaceCanExpert(ScriptedExpert):
    PHASES = ("hover", "descend", "grasp", "lift", "carry", "lower", "release", "retreat")

    def _can(self) -> np.ndarray:
        env = self.env.unwrapped_robosuite
        return self.body_pos(env.obj_body_id["Can"])

    def _goal_xy(self) -> np.ndarray:
        env = self.env.unwrapped_robosuite
        centre = np.array(env.target_bin_placements[env.object_to_id["can"]][:2])
        quadrant_low = centre - np.asarray(env.bin_size[:2]) / 4  # quadrants are half a bin wide
        return quadrant_low + _NEAR_EDGE_MARGIN_M

    def target(self, obs: dict[str, np.ndarray]) -> Target:
        can = self._can()
        yaw = 0.0  # a cylinder: any wrist yaw grasps it; keep the home yaw
        phase = self.phase
        if phase == "hover":
            return Target(can + [0, 0, _HOVER_M], yaw, -1.0)
        if phase == "descend":
            return Target(
                can + [0, 0, _GRASP_DZ_M], yaw, -1.0, pos_tol=0.006, max_speed=0.6, max_steps=40,
                jitter_axes=(0.5, 0.5, 0),
            )
        if phase == "grasp":
            self.memory.setdefault("grasp_pos", self.eef_pos())
            return Target(self.memory["grasp_pos"], yaw, 1.0, wait_steps=8)
        if phase == "lift":
            grasp = self.memory["grasp_pos"]
            return Target(np.array([grasp[0], grasp[1], _CARRY_Z_M]), yaw, 1.0, pos_tol=0.02)
        goal = self._goal_xy()
        if phase == "carry":
            return Target(np.array([*goal, _CARRY_Z_M]), yaw, 1.0, pos_tol=0.015, max_steps=120)
        if phase == "lower":
            return Target(np.array([*goal, _RELEASE_Z_M]), yaw, 1.0, pos_tol=0.01, max_speed=0.6)
        if phase == "release":
            self.memory.setdefault("release_pos", self.eef_pos())
            return Target(self.memory["release_pos"], yaw, -1.0, wait_steps=6)
        return Target(np.array([*goal, _RETREAT_Z_M]), yaw, -1.0, pos_tol=0.01, max_steps=60)

    def next_phase(self, obs: dict[str, np.ndarray]) -> str:
        dropped = np.linalg.norm(self._can() - self.eef_pos()) > 0.06
        if self.phase in ("lift", "carry") and dropped:
            self.memory.clear()  # the can slipped out: pick it up again from wherever it landed
            return "hover"
        if self.phase == "retreat":
            self.memory.clear()  # retreated but no success (can missed the bin): try again
            return "hover"
        return super().next_phase(obs)
