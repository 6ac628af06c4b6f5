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

    def _chain(self, q: np.ndarray) -> tuple[list[tuple[float, ...]], list[tuple[float, float, float]]]:
        """Row-major 3x3 rotation and position of every joint frame after the base, then the tool's (n + 1 each).

        Plain Python floats on purpose: for 6-7 joints this is a few microseconds, where the same as numpy 4x4
        products is dominated by per-call overhead (about 3.5x slower measured in a 100 Hz loop); it runs in every
        control tick.
        """
        rot: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
        pos = (0.0, 0.0, 0.0)
        rots, positions = [], []
        for (a, d, alpha, off), qi in zip(self.rows, q if isinstance(q, list) else np.asarray(q, float).tolist()):
            ct, st = math.cos(qi + off), math.sin(qi + off)
            ca, sa = math.cos(alpha), math.sin(alpha)
            if self.modified:  # Rot_x(alpha) Trans_x(a) Rot_z(theta) Trans_z(d)
                step = (ct, -st, 0.0, st * ca, ct * ca, -sa, st * sa, ct * sa, ca)
                shift = (a, -d * sa, d * ca)
            else:  # Rot_z(theta) Trans_z(d) Trans_x(a) Rot_x(alpha)
                step = (ct, -st * ca, st * sa, st, ct * ca, -ct * sa, 0.0, sa, ca)
                shift = (a * ct, a * st, d)
            moved = _rotate(rot, shift)
            pos = (pos[0] + moved[0], pos[1] + moved[1], pos[2] + moved[2])
            rot = _compose(rot, step)
            rots.append(rot)
            positions.append(pos)
        rots.append(rot)
        positions.append(tuple(pos[r] + self.flange_d * rot[3 * r + 2] for r in range(3)))
        return rots, positions

    def frames(self, q: np.ndarray) -> np.ndarray:
        """(n + 2, 4, 4): the pose of every joint frame (base first) and, last, of the tool, in the base frame."""
        rots, positions = self._chain(q)
        out = np.zeros((self.n_joints + 2, 4, 4))
        out[:, 3, 3] = 1.0
        out[0, :3, :3] = np.eye(3)
        out[1:, :3, :3] = np.array(rots).reshape(-1, 3, 3)
        out[1:, :3, 3] = positions
        return out

    def forward(self, q: np.ndarray) -> np.ndarray:
        """4x4 pose of the tool in the base frame."""
        return self.frames(q)[-1]

    def jacobian(self, q: np.ndarray) -> np.ndarray:
        """6 x n geometric Jacobian: rows 0-2 linear velocity, rows 3-5 angular velocity, base frame."""
        return np.array(self._jacobian_columns(q)).T

    def _jacobian_columns(self, q: np.ndarray) -> list[tuple[float, ...]]:
        """The Jacobian's n columns as 6-tuples of floats.

        Joint i turns about the z axis of frame i (modified DH) or of frame i-1 (standard DH); column i is
        (z x (p_tool - p_axis), z). One forward pass, no finite differences: it runs in every control tick.
        """
        rots, positions = self._chain(q)
        tool = positions[-1]
        base = [(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)], [(0.0, 0.0, 0.0)]
        axes = zip(rots[:-1], positions[:-1]) if self.modified else zip(base[0] + rots[:-2], base[1] + positions[:-2])
        columns = []
        for rot, (px, py, pz) in axes:
            zx, zy, zz = rot[2], rot[5], rot[8]
            rx, ry, rz = tool[0] - px, tool[1] - py, tool[2] - pz
            columns.append((zy * rz - zz * ry, zz * rx - zx * rz, zx * ry - zy * rx, zx, zy, zz))
        return columns

    def dls_step(self, q: np.ndarray, twist: np.ndarray, damping: float = 0.02) -> np.ndarray:
        """Joint step dq = J^T (J J^T + damping^2 I)^-1 twist that best realises ``twist`` = (dx, dy, dz, rx, ry,
        rz) in the base frame.

        Damped least squares keeps dq bounded near singularities, where a plain pseudo-inverse would ask for
        arbitrarily large joint motion. The 6x6 system is symmetric positive definite, solved by Cholesky in plain
        floats (like the Jacobian, cheaper than numpy's per-call overhead at this size).
        """
        return np.array(self.dls_step_floats(np.asarray(q, dtype=np.float64).tolist(),
                                             np.asarray(twist, dtype=np.float64).reshape(6).tolist(), damping))

    def dls_step_floats(self, q: list[float], b: list[float], damping: float = 0.02) -> list[float]:
        """:meth:`dls_step` on plain float lists (the safety filter's form)."""
        cols = self._jacobian_columns(q)
        gram = [0.0] * 36  # lower triangle of J J^T + damping^2 I, row-major 6x6
        for c in cols:
            for r in range(6):
                for k in range(r + 1):
                    gram[6 * r + k] += c[r] * c[k]
        for r in range(6):
            gram[7 * r] += damping * damping
        low = [0.0] * 36  # Cholesky factor L, gram = L L^T
        for r in range(6):
            for k in range(r + 1):
                acc = gram[6 * r + k]
                for m in range(k):
                    acc -= low[6 * r + m] * low[6 * k + m]
                low[6 * r + k] = math.sqrt(acc) if r == k else acc / low[7 * k]
        y = [0.0] * 6  # L y = b
        for r in range(6):
            acc = b[r]
            for m in range(r):
                acc -= low[6 * r + m] * y[m]
            y[r] = acc / low[7 * r]
        x = [0.0] * 6  # L^T x = y
        for r in range(5, -1, -1):
            acc = y[r]
            for m in range(r + 1, 6):
                acc -= low[6 * m + r] * x[m]
            x[r] = acc / low[7 * r]
        return [c[0] * x[0] + c[1] * x[1] + c[2] * x[2] + c[3] * x[3] + c[4] * x[4] + c[5] * x[5] for c in cols]


def _compose(a: tuple[float, ...], b: tuple[float, ...]) -> tuple[float, ...]:
    """Product of two row-major 3x3 matrices."""
    a0, a1, a2, a3, a4, a5, a6, a7, a8 = a
    b0, b1, b2, b3, b4, b5, b6, b7, b8 = b
    return (a0 * b0 + a1 * b3 + a2 * b6, a0 * b1 + a1 * b4 + a2 * b7, a0 * b2 + a1 * b5 + a2 * b8,
            a3 * b0 + a4 * b3 + a5 * b6, a3 * b1 + a4 * b4 + a5 * b7, a3 * b2 + a4 * b5 + a5 * b8,
            a6 * b0 + a7 * b3 + a8 * b6, a6 * b1 + a7 * b4 + a8 * b7, a6 * b2 + a7 * b5 + a8 * b8)


def _rotate(a: tuple[float, ...], v: tuple[float, float, float]) -> tuple[float, float, float]:
    """Row-major 3x3 matrix times a 3-vector."""
    return (a[0] * v[0] + a[1] * v[1] + a[2] * v[2], a[3] * v[0] + a[4] * v[1] + a[5] * v[2],
            a[6] * v[0] + a[7] * v[1] + a[8] * v[2])


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
