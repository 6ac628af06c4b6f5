"""Robot-agnostic arm types: state in the observation contract and the delta-pose action convention.

The observation keys and the action scaling match the simulator (robosuite OSC_POSE), so a policy trained in
simulation can be run on hardware without remapping.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

# robosuite OSC convention: a unit action moves at most this far per control step.
OUTPUT_MAX_POS_M = 0.05
OUTPUT_MAX_ROT_RAD = 0.5
ACTION_DIM = 7
N_ARM_JOINTS = 7
N_GRIPPER_JOINTS = 2


class StaleStateError(RuntimeError):
    """The latest robot state is missing or older than allowed; acting on it would be unsafe."""


@dataclass(frozen=True)
class ArmState:
    """One consistent robot state sample."""

    stamp_s: float  # sample time in seconds (sender clock for ROS headers)
    eef_pos: np.ndarray  # (3,) float32 end-effector position in the base frame, metres
    eef_quat: np.ndarray  # (4,) float32 end-effector orientation, xyzw, unit norm
    gripper_qpos: np.ndarray  # (2,) float32 finger positions, metres
    joint_pos: np.ndarray  # (7,) float32 arm joint positions, radians

    def as_observation(self) -> dict[str, np.ndarray]:
        """The proprioceptive part of the observation contract (same keys/dtypes as the simulator)."""
        return {
            "eef_pos": np.asarray(self.eef_pos, dtype=np.float32).reshape(3),
            "eef_quat": np.asarray(self.eef_quat, dtype=np.float32).reshape(4),
            "gripper_qpos": np.asarray(self.gripper_qpos, dtype=np.float32).reshape(N_GRIPPER_JOINTS),
            "joint_pos": np.asarray(self.joint_pos, dtype=np.float32).reshape(N_ARM_JOINTS),
        }


@runtime_checkable
class ArmInterface(Protocol):
    """What `RealArmEnv` needs from a robot: read the latest state, send one normalised action."""

    def read_state(self) -> ArmState: ...

    def send_command(self, action: np.ndarray) -> None: ...


def validate_action(action: np.ndarray) -> np.ndarray:
    """Return the action as (7,) float64 clipped to [-1, 1]; raise a one-line ValueError if malformed.

    NaN/inf are rejected rather than clipped: a NaN from a policy means something upstream is broken, and
    silently turning it into a bounded motion would hide that.
    """
    a = np.asarray(action, dtype=np.float64)
    if a.shape != (ACTION_DIM,):
        raise ValueError(f"action must have shape ({ACTION_DIM},), got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"action contains NaN/inf: {a.tolist()}")
    return np.clip(a, -1.0, 1.0)


def quat_multiply(q1: np.ndarray, q2: np.ndarray) -> np.ndarray:
    """Hamilton product q1*q2 for xyzw quaternions (apply q2 first, then q1)."""
    x1, y1, z1, w1 = q1
    x2, y2, z2, w2 = q2
    return np.array(
        [
            w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
            w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
            w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
            w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
        ]
    )


def axis_angle_to_quat(rotvec: np.ndarray) -> np.ndarray:
    """Rotation vector (axis * angle, radians) to an xyzw quaternion."""
    rotvec = np.asarray(rotvec, dtype=np.float64)
    angle = float(np.linalg.norm(rotvec))
    if angle < 1e-12:
        return np.array([0.0, 0.0, 0.0, 1.0])
    axis = rotvec / angle
    return np.concatenate([axis * np.sin(angle / 2.0), [np.cos(angle / 2.0)]])


def integrate_action(
    pos: np.ndarray,
    quat_xyzw: np.ndarray,
    action: np.ndarray,
    output_max_pos: float = OUTPUT_MAX_POS_M,
    output_max_rot: float = OUTPUT_MAX_ROT_RAD,
) -> tuple[np.ndarray, np.ndarray]:
    """Absolute target pose from the current pose and a normalised delta action.

    The rotation delta is applied in the base frame (left-multiplied), as robosuite's OSC does, so that
    "rotate about +z" means the same thing whatever the current tool orientation is.
    """
    a = validate_action(action)
    target_pos = np.asarray(pos, dtype=np.float64) + a[:3] * output_max_pos
    dq = axis_angle_to_quat(a[3:6] * output_max_rot)
    q = quat_multiply(dq, np.asarray(quat_xyzw, dtype=np.float64))
    q /= np.linalg.norm(q)
    # Keep w >= 0 so targets do not flip sign between steps (same rotation, but confuses filters/loggers).
    if q[3] < 0:
        q = -q
    return target_pos, q
