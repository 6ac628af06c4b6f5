"""Shared machinery for the scripted experts: config, waypoint targets, and the proportional OSC controller.

Each task expert is a small state machine over named phases. In every step the task code turns privileged sim
state into a `Target` (where the grip site should go, which yaw, gripper command); this base class turns the
target into a 7-D delta action, decides when the phase is complete, and injects the configured noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation

from sim.env import SimEnv

# Top-down grasp orientation of the grip site in the world frame (columns are the site axes): site x (the axis
# the fingers close along) = world +y, site y = world +x, site z (approach direction) = world -z. The Panda's
# home pose is this orientation tilted by ~8 degrees; the controller straightens it in the first steps.
R_TOP_DOWN = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])

# The arm's OSC_POSE output_max: an action of 1 asks for 5 cm / 0.5 rad of motion in one step.
_POS_SCALE_M = 0.05
_ROT_SCALE_RAD = 0.5


@dataclass(frozen=True)
class ExpertConfig:
    """Knobs that make scripted demonstrations more varied (all zero = the cleanest expert)."""

    action_noise_std: float = 0.0
    """Std of Gaussian noise added to the 6 arm action dims (action units; 0.1 = 5 mm / 0.05 rad per step)."""
    waypoint_jitter_m: float = 0.0
    """Each phase's target is offset by a random vector drawn uniformly in a ball of this radius (metres)."""
    hesitation_prob: float = 0.0
    """Probability, at the start of each phase, of pausing (zero arm motion) for a few steps first."""
    hesitation_steps: tuple[int, int] = (3, 10)
    """Inclusive range of the pause length in steps when a hesitation happens."""
    seed: int | None = 0
    """Seed of the expert's own random stream (noise, jitter, hesitation); None draws fresh entropy."""


@dataclass
class Target:
    """What one phase wants this step."""

    pos: np.ndarray
    """Desired grip-site position in the world frame (metres)."""
    yaw: float
    """Desired rotation about world z relative to R_TOP_DOWN (radians)."""
    gripper: float
    """-1 open, +1 close."""
    pos_tol: float = 0.01
    """Phase can complete once the position error is below this (metres)."""
    yaw_tol: float = 0.05
    """... and the orientation error below this (radians)."""
    max_speed: float = 1.0
    """Cap on the norm of the translation action; lower for careful motions near contacts."""
    wait_steps: int = 0
    """If > 0 the phase completes after exactly this many steps (grasp/release), ignoring tolerances."""
    max_steps: int = 80
    """Give up waiting for convergence after this many steps and move on (avoids deadlocks on contact)."""
    jitter_axes: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """Per-axis scale of waypoint_jitter_m for this phase; (1, 1, 0) keeps a grasp height exact."""


def yaw_of(rotation: np.ndarray) -> float:
    """Rotation about world z of `rotation` relative to R_TOP_DOWN, in (-pi, pi]."""
    relative = rotation @ R_TOP_DOWN.T
    return math.atan2(relative[1, 0], relative[0, 0])


def wrap_angle(angle: float, period: float = 2 * math.pi) -> float:
    """Wrap to [-period/2, period/2): used for symmetric objects (cube: pi/2, gripper: pi)."""
    return (angle + period / 2) % period - period / 2


def body_yaw(quat_wxyz: np.ndarray) -> float:
    """Yaw (rotation about world z) of a MuJoCo body quaternion (w, x, y, z)."""
    w, x, y, z = quat_wxyz
    return math.atan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))


class ScriptedExpert:
    """Waypoint state machine + proportional controller. Subclasses define PHASES and `target()`."""

    PHASES: tuple[str, ...] = ()
    pos_gain: float = 2.0  # action per (error / 5 cm): 2.5 cm error already saturates; fast but no overshoot
    rot_gain: float = 1.5  # same for orientation, relative to 0.5 rad

    def __init__(self, env: SimEnv, config: ExpertConfig) -> None:
        self.env = env
        self.config = config
        self.rng = np.random.default_rng(config.seed)
        self.phase = self.PHASES[0]
        self._phase_steps = 0
        self._pause_left = 0
        self._jitter = np.zeros(3)
        self.memory: dict[str, Any] = {}

    # ---------------------------------------------------------------- public API

    def reset(self, obs: dict[str, np.ndarray], episode_seed: int | None = None) -> None:
        """Start a new episode (call after env.reset()).

        episode_seed re-seeds the noise stream from (config.seed, episode_seed), so an episode's expert noise
        does not depend on which episodes ran before it (e.g. when seeds are split across worker processes).
        """
        if episode_seed is not None:
            entropy = [episode_seed] if self.config.seed is None else [self.config.seed, episode_seed]
            self.rng = np.random.default_rng(entropy)
        self.memory = {}
        self._enter(self.PHASES[0])

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """7-D float32 action in [-1, 1] for the current observation."""
        target = self.target(obs)
        if self._phase_complete(obs, target):
            self._advance(obs)
            target = self.target(obs)
        self._phase_steps += 1
        if self._pause_left > 0:
            self._pause_left -= 1
            action = np.zeros(7)
            action[6] = target.gripper
            return action.astype(np.float32)
        goal = target.pos + self._jitter * np.asarray(target.jitter_axes)
        action = np.zeros(7)
        action[:3] = self._translation_action(goal - self.eef_pos(), target.max_speed)
        action[3:6] = self._rotation_action(target.yaw)
        action[6] = target.gripper
        if self.config.action_noise_std > 0:
            action[:6] += self.rng.normal(0.0, self.config.action_noise_std, size=6)
        return np.clip(action, -1.0, 1.0).astype(np.float32)

    # ---------------------------------------------------------------- for subclasses

    def target(self, obs: dict[str, np.ndarray]) -> Target:
        raise NotImplementedError

    def next_phase(self, obs: dict[str, np.ndarray]) -> str:
        """Phase that follows the current one; override to add retries. Default: the next in PHASES."""
        index = self.PHASES.index(self.phase)
        return self.PHASES[min(index + 1, len(self.PHASES) - 1)]

    @property
    def sim(self) -> Any:
        return self.env.unwrapped_robosuite.sim

    def eef_pos(self) -> np.ndarray:
        site = self.env.unwrapped_robosuite.robots[0].eef_site_id["right"]
        return np.array(self.sim.data.site_xpos[site])

    def eef_rot(self) -> np.ndarray:
        site = self.env.unwrapped_robosuite.robots[0].eef_site_id["right"]
        return np.array(self.sim.data.site_xmat[site]).reshape(3, 3)

    def eef_yaw(self) -> float:
        return yaw_of(self.eef_rot())

    def body_pos(self, body_id: int) -> np.ndarray:
        return np.array(self.sim.data.body_xpos[body_id])

    def body_quat(self, body_id: int) -> np.ndarray:
        return np.array(self.sim.data.body_xquat[body_id])

    # ---------------------------------------------------------------- internals

    def _enter(self, phase: str) -> None:
        self.phase = phase
        self._phase_steps = 0
        radius = self.config.waypoint_jitter_m
        if radius > 0:
            direction = self.rng.normal(size=3)
            direction /= np.linalg.norm(direction)
            self._jitter = direction * radius * self.rng.uniform() ** (1 / 3)  # uniform in the ball
        else:
            self._jitter = np.zeros(3)
        self._pause_left = 0
        if self.config.hesitation_prob > 0 and self.rng.uniform() < self.config.hesitation_prob:
            low, high = self.config.hesitation_steps
            self._pause_left = int(self.rng.integers(low, high + 1))

    def _advance(self, obs: dict[str, np.ndarray]) -> None:
        self._enter(self.next_phase(obs))

    def _phase_complete(self, obs: dict[str, np.ndarray], target: Target) -> bool:
        if self._pause_left > 0:
            return False
        if target.wait_steps > 0:
            return self._phase_steps >= target.wait_steps
        if self._phase_steps >= target.max_steps:
            return True
        goal = target.pos + self._jitter * np.asarray(target.jitter_axes)
        pos_ok = np.linalg.norm(goal - self.eef_pos()) < target.pos_tol
        yaw_ok = abs(self._rotation_error(target.yaw)).max() < target.yaw_tol
        return bool(pos_ok and yaw_ok)

    def _translation_action(self, error: np.ndarray, max_speed: float) -> np.ndarray:
        command = self.pos_gain * error / _POS_SCALE_M
        norm = np.linalg.norm(command)
        # Scale the whole vector (not per axis) so the gripper moves in a straight line toward the target.
        return command * (max_speed / norm) if norm > max_speed else command

    def _rotation_error(self, yaw: float) -> np.ndarray:
        desired = Rotation.from_euler("z", yaw).as_matrix() @ R_TOP_DOWN
        # OSC applies the delta rotation on the left, in the (world-aligned) base frame.
        return Rotation.from_matrix(desired @ self.eef_rot().T).as_rotvec()

    def _rotation_action(self, yaw: float) -> np.ndarray:
        return np.clip(self.rot_gain * self._rotation_error(yaw) / _ROT_SCALE_RAD, -1.0, 1.0)
