"""Serial-arm kinematics from Denavit-Hartenberg parameters: forward kinematics, the geometric Jacobian, and one
damped-least-squares step. The safety filter uses it to see which joints a Cartesian step moves (joint position and
velocity limits) and the node uses it to turn a Cartesian step into a joint target for joint_trajectory_controller.

Only the Jacobian matters for a differential step, so small offsets between this model's tool frame and the
driver's measured end-effector frame do not bias the target: the step is always taken from the measured pose.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DHChain:
    """One row per joint: (a, d, alpha, theta_offset), metres and radians."""

    rows: tuple[tuple[float, float, float, float], ...]  # per joint (a, d, alpha, theta_offset)
    modified: bool = True  # True: Craig's modified convention (Franka's datasheet); False: standard (UR's)
    flange_d: float = 0.0  # tool offset along the last z axis (m), e.g. flange + hand

    @property
    def n_joints(self) -> int:
        return len(self.rows)

    def frames(self, q: np.ndarray) -> list[np.ndarray]:
        """4x4 pose of every joint frame (base first) and, last, of the tool, in the base frame."""
        t = np.eye(4)
        out = [t]
        for (a, d, alpha, off), qi in zip(self.rows, np.asarray(q, dtype=np.float64)):
            ct, st = math.cos(qi + off), math.sin(qi + off)
            ca, sa = math.cos(alpha), math.sin(alpha)
            if self.modified:  # Rot_x(alpha) Trans_x(a) Rot_z(theta) Trans_z(d)
                step = np.array([[ct, -st, 0, a], [st * ca, ct * ca, -sa, -d * sa],
                                 [st * sa, ct * sa, ca, d * ca], [0, 0, 0, 1]])
            else:  # Rot_z(theta) Trans_z(d) Trans_x(a) Rot_x(alpha)
                step = np.array([[ct, -st * ca, st * sa, a * ct], [st, ct * ca, -ct * sa, a * st],
                                 [0, sa, ca, d], [0, 0, 0, 1]])
            t = t @ step
            out.append(t)
        tool = t.copy()
        tool[:3, 3] += self.flange_d * t[:3, 2]
        out.append(tool)
        return out

    def forward(self, q: np.ndarray) -> np.ndarray:
        """4x4 pose of the tool in the base frame."""
        return self.frames(q)[-1]

    def jacobian(self, q: np.ndarray) -> np.ndarray:
        """6 x n geometric Jacobian: rows 0-2 linear velocity, rows 3-5 angular velocity, base frame.

        Joint i turns about the z axis of frame i (modified DH) or of frame i-1 (standard DH); column i is
        (z x (p_tool - p_axis), z). One forward pass, no finite differences: it runs in every control tick.
        """
        frames = self.frames(q)
        tool = frames[-1][:3, 3]
        axes = frames[1:-1] if self.modified else frames[:-2]
        z = np.array([f[:3, 2] for f in axes]).T  # (3, n) joint axes
        r = tool[:, None] - np.array([f[:3, 3] for f in axes]).T  # (3, n) axis point -> tool
        linear = np.stack([z[1] * r[2] - z[2] * r[1], z[2] * r[0] - z[0] * r[2], z[0] * r[1] - z[1] * r[0]])
        return np.concatenate([linear, z])

    def dls_step(self, q: np.ndarray, twist: np.ndarray, damping: float = 0.02) -> np.ndarray:
        """Joint step dq that best realises ``twist`` = (dx, dy, dz, rx, ry, rz) in the base frame.

        Damped least squares keeps dq bounded near singularities, where a plain pseudo-inverse would ask for
        arbitrarily large joint motion.
        """
        jac = self.jacobian(q)
        return jac.T @ np.linalg.solve(jac @ jac.T + damping ** 2 * np.eye(6), np.asarray(twist, dtype=np.float64))


def rotvec_of(rot: np.ndarray) -> np.ndarray:
    """Rotation vector (axis * angle) of a 3x3 rotation matrix (small and moderate angles)."""
    cos = np.clip((np.trace(rot) - 1.0) / 2.0, -1.0, 1.0)
    angle = np.arccos(cos)
    vec = np.array([rot[2, 1] - rot[1, 2], rot[0, 2] - rot[2, 0], rot[1, 0] - rot[0, 1]])
    if angle < 1e-9:
        return vec / 2.0
    return vec * angle / (2.0 * np.sin(angle))


# Franka Emika Panda / FR3 (same kinematic chain), modified DH from Franka's datasheet; flange 0.107 m + hand 0.1034 m.
FRANKA = DHChain(rows=((0.0, 0.333, 0.0, 0.0), (0.0, 0.0, -np.pi / 2, 0.0), (0.0, 0.316, np.pi / 2, 0.0),
                       (0.0825, 0.0, np.pi / 2, 0.0), (-0.0825, 0.384, -np.pi / 2, 0.0), (0.0, 0.0, np.pi / 2, 0.0),
                       (0.088, 0.0, np.pi / 2, 0.0)), modified=True, flange_d=0.107 + 0.1034)
# Universal Robots UR5e, standard DH from UR's published parameters.
UR5E = DHChain(rows=((0.0, 0.1625, np.pi / 2, 0.0), (-0.425, 0.0, 0.0, 0.0), (-0.3922, 0.0, 0.0, 0.0),
                     (0.0, 0.1333, np.pi / 2, 0.0), (0.0, 0.0997, -np.pi / 2, 0.0), (0.0, 0.0996, 0.0, 0.0)),
               modified=False)
CHAINS = {"franka": FRANKA, "ur5e": UR5E}


def chain_by_name(name: str) -> DHChain | None:
    """The named chain, or None for "" / "none" (no kinematic model: joint limits then guard the measured state)."""
    if name in ("", "none"):
        return None
    if name not in CHAINS:
        raise ValueError(f"unknown kinematics '{name}'; choose one of {sorted(CHAINS)} or 'none'")
    return CHAINS[name]
