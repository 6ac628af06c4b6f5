"""Scripted expert for NutAssemblySquare: grasp the square nut by its handle, lift it above the square peg,
turn it so the square hole lines up with the peg, lower it over the peg, release, retreat.

Once the nut is held, the placement phases servo the *nut* (privileged pose) rather than the gripper: the eef
target is eef + (desired nut pose - nut pose), so slip or pivoting in the grasp is corrected on the fly.
"""

from __future__ import annotations

import math

import numpy as np

from sim.experts.base import ScriptedExpert, Target, body_yaw, wrap_angle

_HOVER_M = 0.08
_GRASP_DZ_M = 0.0  # grip the handle at its mid-thickness
_CARRY_Z_M = 1.00  # nut bottom ~1 cm below the grip site; the peg top is at 0.95
_INSERTED_NUT_Z_M = 0.845  # success needs nut z < table (0.82) + 0.05; the nut then rests on the peg base
_INSERT_XY_TOL_M = 0.004  # hole clearance around the peg is ~6.5 mm per side
_RETREAT_DZ_M = 0.12  # success needs the gripper > ~7 cm from the nut
# Wrist yaw (relative to the top-down home) the Panda reaches comfortably: joint 7 sits at +0.81 rad at home and
# turns about -0.8 rad per rad of yaw, so its +2.9 rad limit is hit near yaw -2.6 at home and already near -1.9
# above the nut spawn area; the other side goes past +pi. Keep a margin on both.
_YAW_WINDOW = (-1.6, 2.6)
# Handle directions allowed at placement (nut yaw): pointing at the robot (pi) keeps the gripper closest to the
# base; sideways (+-pi/2) is the fallback. Pointing away (0) puts the gripper at the edge of the workspace.
_PLACE_NUT_YAWS = (math.pi, math.pi / 2, -math.pi / 2)
_SIDEWAYS_PENALTY_RAD = 0.6


class NutSquareExpert(ScriptedExpert):
    PHASES = ("hover", "descend", "grasp", "lift", "align", "insert", "release", "retreat")

    def _ids(self) -> tuple[int, int, int]:
        env = self.env.unwrapped_robosuite
        nut = env.nuts[env.nut_id]
        handle_site = self.sim.model.site_name2id(nut.important_sites["handle"])
        return env.obj_body_id[nut.name], handle_site, env.peg1_body_id  # peg1 is the square peg

    def target(self, obs: dict[str, np.ndarray]) -> Target:
        nut_id, handle_site, peg_id = self._ids()
        nut = self.body_pos(nut_id)
        nut_yaw = body_yaw(self.body_quat(nut_id))
        handle = np.array(self.sim.data.site_xpos[handle_site])
        eef = self.eef_pos()
        phase = self.phase
        grasp_yaw = self.memory.setdefault("grasp_yaw", self._grasp_yaw(nut_yaw))
        if phase == "hover":
            return Target(handle + [0, 0, _HOVER_M], grasp_yaw, -1.0)
        if phase == "descend":
            return Target(
                handle + [0, 0, _GRASP_DZ_M], grasp_yaw, -1.0, pos_tol=0.005, max_speed=0.5, max_steps=40,
                jitter_axes=(0.3, 0.3, 0),
            )
        if phase == "grasp":
            self.memory.setdefault("grasp_pos", eef)
            return Target(self.memory["grasp_pos"], self.eef_yaw(), 1.0, wait_steps=10)
        if phase == "lift":
            grasp = self.memory["grasp_pos"]
            return Target(np.array([grasp[0], grasp[1], _CARRY_Z_M]), self.eef_yaw(), 1.0, pos_tol=0.02)
        peg = self.body_pos(peg_id)
        nut_goal_yaw = self.memory.setdefault("nut_goal_yaw", self._place_nut_yaw(nut_yaw))
        place_yaw = self.eef_yaw() + wrap_angle(nut_goal_yaw - nut_yaw)
        if phase == "align":
            goal = eef + np.array([peg[0] - nut[0], peg[1] - nut[1], _CARRY_Z_M - eef[2]])
            return Target(goal, place_yaw, 1.0, pos_tol=0.004, yaw_tol=0.03, max_speed=0.8, max_steps=150)
        if phase == "insert":
            xy_error = peg[:2] - nut[:2]
            # Descend only while the hole is centred over the peg: the arm drifts sideways when it moves down
            # at this reach, and a nut lowered 2 cm off-centre lands on the peg top and jams there.
            centred = bool(np.linalg.norm(xy_error) < _INSERT_XY_TOL_M)
            dz = _INSERTED_NUT_Z_M - nut[2] if centred else 0.0
            goal = eef + np.array([xy_error[0], xy_error[1], dz])
            # While re-centring, the phase must not count as done (the goal is then only a sideways shift).
            tol = 0.006 if centred else 0.0
            return Target(goal, place_yaw, 1.0, pos_tol=tol, max_speed=0.4, max_steps=60, jitter_axes=(0, 0, 0))
        if phase == "release":
            self.memory.setdefault("release_pos", eef)
            return Target(self.memory["release_pos"], self.eef_yaw(), -1.0, wait_steps=6)
        release = self.memory["release_pos"]
        return Target(release + [0, 0, _RETREAT_DZ_M], self.eef_yaw(), -1.0, max_steps=40)

    @staticmethod
    def _grasp_yaw(nut_yaw: float) -> float:
        """Wrist yaw for the grasp: fingers close across the handle, i.e. along the nut's local y axis.

        The gripper is symmetric under a half turn, so nut_yaw and nut_yaw + pi both work. Prefer nut_yaw + pi:
        then turning the handle toward the robot for placement brings the wrist back near its home yaw.
        """
        preferred = wrap_angle(nut_yaw + math.pi)
        if _YAW_WINDOW[0] <= preferred <= _YAW_WINDOW[1]:
            return preferred
        return wrap_angle(nut_yaw)

    def _place_nut_yaw(self, nut_yaw: float) -> float:
        """Nut yaw to place at (the square hole matches the peg every quarter turn); chosen once per grasp."""
        best, best_cost = math.pi, math.inf
        for candidate in _PLACE_NUT_YAWS:
            turn = wrap_angle(candidate - nut_yaw)
            if not _YAW_WINDOW[0] <= self.eef_yaw() + turn <= _YAW_WINDOW[1]:
                continue
            cost = abs(turn) + (0.0 if candidate == math.pi else _SIDEWAYS_PENALTY_RAD)
            if cost < best_cost:
                best, best_cost = candidate, cost
        return best

    def next_phase(self, obs: dict[str, np.ndarray]) -> str:
        nut_id, handle_site, _ = self._ids()
        handle = np.array(self.sim.data.site_xpos[handle_site])
        dropped = np.linalg.norm(handle - self.eef_pos()) > 0.04
        if self.phase in ("lift", "align") and dropped:
            self.memory.clear()  # lost the nut: go back and grasp it again
            return "hover"
        if self.phase == "retreat":
            self.memory.clear()  # released but not on the peg (e.g. jammed on its top): pick it up again
            return "hover"
        return super().next_phase(obs)
