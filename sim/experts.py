"""Scripted experts for Lift, PickPlaceCan and NutAssemblySquare.

Each expert is a small state machine over waypoints: hover above the object with the gripper yawed to fit it,
descend, close, lift, carry, lower, release. A proportional controller turns the pose error into OSC delta actions
(position error / 0.05 m and rotation error / 0.5 rad per unit action, the controller's output_max). The experts
read privileged simulator state (object poses), which is why they exist only in simulation.

Knobs for diverse, deliberately imperfect data (``ExpertConfig``): Gaussian action noise, random offsets of every
waypoint, and hesitation (pauses at phase changes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation

_POS_SCALE = 0.05  # metres per unit action (OSC output_max)
_ROT_SCALE = 0.5  # radians per unit action
_OPEN, _CLOSE = -1.0, 1.0


@dataclass(frozen=True)
class ExpertConfig:
    action_noise_std: float = 0.0  # std of Gaussian noise added to the motion part of every action (units of action)
    waypoint_jitter_m: float = 0.0  # max random offset of each waypoint (uniform per axis; z gets a third of it)
    hesitation_prob: float = 0.0  # chance per phase change of pausing for 3-12 steps
    seed: int = 0  # seed of the knobs' randomness (the env seed sets the scene)
    gain: float = 0.7  # proportional gain on the position error (1 = close the error in one step)
    integral_gain: float = 0.08  # integral gain: removes the steady offset a carried object's weight leaves


def _wrap(angle: float, period: float) -> float:
    """Angle folded into (-period/2, period/2]."""
    return (angle + period / 2) % period - period / 2


def _yaw(rotation: np.ndarray) -> float:
    return math.atan2(rotation[1, 0], rotation[0, 0])


class ScriptedExpert:
    """Shared machinery: phases, the pose controller, the knobs. Subclasses define ``_plan``."""

    symmetry = math.pi / 2  # yaw symmetry of the grasped object (cube, square nut handle: 90 / 180 degrees)

    def __init__(self, env: Any, config: ExpertConfig):
        self.env, self.config = env, config
        self.sim_env = env.unwrapped_robosuite
        self.rng = np.random.default_rng(config.seed)
        self._eef_site = self.sim_env.robots[0].eef_site_id["right"]

    # ------------------------------------------------------------------ state
    @property
    def _sim(self) -> Any:
        return self.sim_env.sim

    def _eef_rot(self) -> np.ndarray:
        return np.asarray(self._sim.data.site_xmat[self._eef_site]).reshape(3, 3)

    def _body_pos(self, name: str) -> np.ndarray:
        return np.asarray(self._sim.data.body_xpos[self._sim.model.body_name2id(name)]).copy()

    def _body_rot(self, name: str) -> np.ndarray:
        return np.asarray(self._sim.data.body_xmat[self._sim.model.body_name2id(name)]).reshape(3, 3).copy()

    def _site_pos(self, name: str) -> np.ndarray:
        return np.asarray(self._sim.data.site_xpos[self._sim.model.site_name2id(name)]).copy()

    # ------------------------------------------------------------------ episode
    def reset(self, obs: dict[str, np.ndarray]) -> None:
        self._rot0 = self._eef_rot().copy()  # gripper pointing down, as the robot starts
        self._phases = self._plan(obs)
        self._index = 0
        self._steps_in_phase = 0
        self._pause = 0
        self._grip = _OPEN
        self._enter_phase()

    def _enter_phase(self) -> None:
        c = self.config
        self._integral = np.zeros(3)
        self._latched: np.ndarray | None = None
        self._jitter = np.zeros(3)
        if c.waypoint_jitter_m > 0:
            self._jitter = self.rng.uniform(-1, 1, 3) * c.waypoint_jitter_m * np.array([1.0, 1.0, 1 / 3])
        if c.hesitation_prob > 0 and self.rng.random() < c.hesitation_prob:
            self._pause = int(self.rng.integers(3, 13))

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        action = np.zeros(7, np.float32)
        if self._index >= len(self._phases):
            action[6] = self._grip
            return action
        phase = self._phases[self._index]
        if self._pause > 0:  # hesitation: hold still, keep the gripper as it is
            self._pause -= 1
            action[6] = self._grip
            return action
        if phase["latch"]:  # a target fixed where the phase began (e.g. "straight up from here")
            if self._latched is None:
                self._latched = phase["target"]()
            target = self._latched
        else:
            target = phase["target"]()
        yaw, grip, tol, hold = phase["yaw"](), phase["grip"], phase["tol"], phase["hold"]
        target = target + (self._jitter if phase["jitter"] else 0.0)
        pos_err = target - obs["eef_pos"]
        # Integrate only near the target, so the long travel between waypoints does not wind it up.
        if np.linalg.norm(pos_err) < 0.02:
            self._integral = np.clip(self._integral + pos_err, -0.5, 0.5)
        action[:3] = np.clip((pos_err * self.config.gain + self._integral * self.config.integral_gain) / _POS_SCALE, -1, 1)
        rot_target = Rotation.from_euler("z", yaw).as_matrix() @ self._rot0
        rot_err = Rotation.from_matrix(rot_target @ self._eef_rot().T).as_rotvec()
        action[3:6] = np.clip(rot_err / _ROT_SCALE * self.config.gain, -1, 1)
        self._grip = grip
        action[6] = grip
        if self.config.action_noise_std > 0:
            action[:6] = np.clip(action[:6] + self.rng.normal(0, self.config.action_noise_std, 6), -1, 1)
        self._steps_in_phase += 1
        reached = np.linalg.norm(pos_err) < tol and np.linalg.norm(rot_err) < 0.1
        if (reached and self._steps_in_phase >= hold) or self._steps_in_phase >= phase["timeout"]:
            self._index += 1
            self._steps_in_phase = 0
            self._enter_phase()
        return action

    # ------------------------------------------------------------------ helpers for plans
    def _grasp_yaw(self, object_rot: np.ndarray, offset: float = 0.0) -> float:
        """Gripper yaw (relative to its start) that lines the fingers up with the object, the shortest way round."""
        return _wrap(_yaw(object_rot) + offset - _yaw(self._rot0), self.symmetry)

    @staticmethod
    def _phase(target, yaw, grip, tol=0.01, hold=1, timeout=60, jitter=True, latch=False) -> dict:
        return {"target": target, "yaw": yaw, "grip": grip, "tol": tol, "hold": hold, "timeout": timeout,
                "jitter": jitter, "latch": latch}

    def _plan(self, obs: dict[str, np.ndarray]) -> list[dict]:
        raise NotImplementedError


class LiftExpert(ScriptedExpert):
    def _plan(self, obs):
        cube = lambda: self._body_pos("cube_main")  # noqa: E731
        yaw = self._grasp_yaw(self._body_rot("cube_main"))
        y = lambda: yaw  # noqa: E731
        up = np.array([0, 0, 0.08])
        return [
            self._phase(lambda: cube() + up, y, _OPEN, tol=0.02),
            self._phase(lambda: cube() + np.array([0, 0, 0.0]), y, _OPEN, tol=0.008, jitter=False),
            self._phase(lambda: cube(), y, _CLOSE, tol=1.0, hold=8, jitter=False),
            self._phase(lambda: cube() + np.array([0, 0, 0.25]), y, _CLOSE, tol=0.02, timeout=80),
        ]


class PickPlaceCanExpert(ScriptedExpert):
    symmetry = 2 * math.pi  # the can is round: keep the gripper's yaw

    def _plan(self, obs):
        env = self.sim_env
        can = lambda: self._body_pos("Can_main")  # noqa: E731
        goal = np.array(env.target_bin_placements[env.object_to_id["can"]], dtype=float)
        y = lambda: 0.0  # noqa: E731
        carry_z = goal[2] + 0.25
        return [
            self._phase(lambda: can() + np.array([0, 0, 0.10]), y, _OPEN, tol=0.02),
            self._phase(lambda: can() + np.array([0, 0, 0.01]), y, _OPEN, tol=0.008, jitter=False),
            self._phase(lambda: can() + np.array([0, 0, 0.01]), y, _CLOSE, tol=1.0, hold=8, jitter=False),
            self._phase(lambda: np.r_[self.env_eef()[:2], carry_z], y, _CLOSE, tol=0.03, jitter=False, latch=True),
            self._phase(lambda: np.r_[goal[:2], carry_z], y, _CLOSE, tol=0.03, timeout=100),
            self._phase(lambda: np.r_[goal[:2], goal[2] + 0.15], y, _CLOSE, tol=0.03),
            self._phase(lambda: np.r_[goal[:2], goal[2] + 0.15], y, _OPEN, tol=1.0, hold=10),
        ]

    def env_eef(self) -> np.ndarray:
        return np.asarray(self._sim.data.site_xpos[self._eef_site]).copy()


class NutAssemblySquareExpert(ScriptedExpert):
    symmetry = math.pi  # the handle is a bar: fingers fit it every 180 degrees

    def _plan(self, obs):
        handle = lambda: self._site_pos("SquareNut_handle_site")  # noqa: E731
        center = lambda: self._site_pos("SquareNut_center_site")  # noqa: E731
        peg = self._body_pos("peg1")
        nut_rot = self._body_rot("SquareNut_main")
        grasp_yaw = self._grasp_yaw(nut_rot, offset=math.pi / 2)

        def place_yaw() -> float:
            # Closed loop on the nut's own yaw (it turns a little as the fingers close): turn the gripper until the
            # nut's sides line up with the square peg, the shortest way (the peg is 90-degree symmetric).
            gripper = _wrap(_yaw(self._eef_rot()) - _yaw(self._rot0), 2 * math.pi)
            return gripper - _wrap(_yaw(self._body_rot("SquareNut_main")), math.pi / 2)
        def over_peg(z: float):
            def target():
                # Closed loop on the nut itself: move the gripper by however far the nut's centre is from the peg,
                # so a nut that swung or slipped in the grasp still lines up.
                return np.r_[self.env_eef()[:2] + peg[:2] - center()[:2], z]
            return target

        g, p = (lambda: grasp_yaw), place_yaw
        top = self.sim_env.table_offset[2] + 0.25
        return [
            self._phase(lambda: handle() + np.array([0, 0, 0.08]), g, _OPEN, tol=0.015),
            self._phase(lambda: handle(), g, _OPEN, tol=0.008, jitter=False),
            self._phase(lambda: handle(), g, _CLOSE, tol=1.0, hold=8, jitter=False),
            self._phase(lambda: np.r_[self.env_eef()[:2], top], g, _CLOSE, tol=0.03, jitter=False, latch=True),
            self._phase(lambda: np.r_[self.env_eef()[:2], top], p, _CLOSE, tol=0.03, hold=5, jitter=False, latch=True),
            self._phase(over_peg(top), p, _CLOSE, tol=0.02, timeout=100),
            # Line up precisely before going down: the nut's hole leaves the peg a few millimetres.
            self._phase(over_peg(top), p, _CLOSE, tol=0.004, hold=3, timeout=80, jitter=False),
            # Carry the nut down onto the peg while holding it (the peg guides it), then let go.
            self._phase(over_peg(self.sim_env.table_offset[2] + 0.12), p, _CLOSE, tol=0.006, jitter=False),
            self._phase(over_peg(self.sim_env.table_offset[2] + 0.07), p, _CLOSE, tol=0.008, timeout=30, jitter=False),
            self._phase(over_peg(self.sim_env.table_offset[2] + 0.07), p, _OPEN, tol=1.0, hold=10, jitter=False),
        ]

    def env_eef(self) -> np.ndarray:
        return np.asarray(self._sim.data.site_xpos[self._eef_site]).copy()


EXPERTS = {"Lift": LiftExpert, "PickPlaceCan": PickPlaceCanExpert, "NutAssemblySquare": NutAssemblySquareExpert}


def make_expert(env: Any, config: ExpertConfig | None = None) -> ScriptedExpert:
    task = env.config.task
    if task not in EXPERTS:
        raise ValueError(f"no scripted expert for task '{task}'; available: {sorted(EXPERTS)}")
    return EXPERTS[task](env, config or ExpertConfig())
