"""The safety filter between a policy's action and the arm, shared by simulated evaluation and the ROS node.

Stages, in this order (each one only ever shrinks the motion; none can undo an earlier one):

1. NaN/shape check of the action and of the measured state -> Hold
2. observation age -> Hold when the observation the action came from is too old
3. per-step delta clip: each axis of the normalised action to [-1, 1], scaled to metres / radians
   (robosuite OSC_POSE: 0.05 m and 0.5 rad per step at 1, the scale the policy was trained with), then each axis
   to ``max_step_pos`` / ``max_step_rot`` (a real arm may be slowed below the training scale)
4. integration to an absolute target from the *measured* pose (never from the previous target, so controller lag
   cannot accumulate into a jump)
5. workspace box on the target position (and the step re-clipped, so an arm outside the box returns one step at a time)
6. joint position and velocity limits: with a kinematic model the step's joint motion (damped least squares) is
   scaled down uniformly until no joint leaves its limits or exceeds its velocity over one period; without one, an
   arm already outside its joint limits is stopped
7. gripper hysteresis: the gripper switches state only when the action crosses +h (close) or -h (open)

The filter is deterministic given its inputs (the only state is the armed flag and the gripper's latch) and pure
numpy, so its unit tests pin each stage by itself. :class:`Watchdog` holds the arm when N control periods pass
without a command.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from hardware.kinematics import DHChain

PANDA_JOINT_LOWER = (-2.8973, -1.7628, -2.8973, -3.0718, -2.8973, -0.0175, -2.8973)
PANDA_JOINT_UPPER = (2.8973, 1.7628, 2.8973, -0.0698, 2.8973, 3.7525, 2.8973)
PANDA_JOINT_VEL = (2.175, 2.175, 2.175, 2.175, 2.61, 2.61, 2.61)


@dataclass
class SafetyLimits:
    """Every bound the filter enforces; per robot in its deploy YAML (`safety:` section)."""

    output_max_pos: float = 0.05  # metres per step for a unit action on one axis (robosuite OSC_POSE scaling)
    output_max_rot: float = 0.5  # radians per step for a unit action on one rotation axis
    max_step_pos: float = 0.05  # per-axis translation limit per step (m); below output_max_pos to slow a real arm
    max_step_rot: float = 0.5  # per-axis rotation limit per step (rad); below output_max_rot to slow a real arm
    max_obs_age_s: float = 0.25  # hold when the observation an action came from is older than this
    workspace_low: tuple[float, float, float] = (0.15, -0.6, 0.02)  # target position box, base frame (m)
    workspace_high: tuple[float, float, float] = (0.85, 0.6, 0.9)  # Franka defaults: in front of the base, above table
    joint_lower: tuple[float, ...] = PANDA_JOINT_LOWER  # joint position limits (rad), observation order
    joint_upper: tuple[float, ...] = PANDA_JOINT_UPPER
    joint_margin: float = 0.05  # keep this far (rad) inside the joint limits
    joint_max_vel: tuple[float, ...] = PANDA_JOINT_VEL  # rad/s per joint; a step may move a joint vel * dt at most
    control_dt: float = 0.05  # control period (s) the velocity limits are integrated over
    gripper_hysteresis: float = 0.2  # close above +h, open below -h, otherwise keep the current state
    watchdog_periods: int = 3  # hold after this many control periods without a command

    def __post_init__(self) -> None:
        self.workspace_low, self.workspace_high = tuple(self.workspace_low), tuple(self.workspace_high)
        self.joint_lower, self.joint_upper = tuple(self.joint_lower), tuple(self.joint_upper)
        self.joint_max_vel = tuple(self.joint_max_vel)
        if len(self.workspace_low) != 3 or len(self.workspace_high) != 3:
            raise ValueError("workspace_low and workspace_high need 3 values (x, y, z)")
        if np.any(np.asarray(self.workspace_low) >= np.asarray(self.workspace_high)):
            raise ValueError(f"workspace_low {self.workspace_low} must be below workspace_high {self.workspace_high}")
        if not len(self.joint_lower) == len(self.joint_upper) == len(self.joint_max_vel):
            raise ValueError("joint_lower, joint_upper and joint_max_vel need one value per joint")
        if min(self.output_max_pos, self.output_max_rot, self.max_step_pos, self.max_step_rot, self.control_dt) <= 0:
            raise ValueError("output_max_pos/rot, max_step_pos/rot and control_dt must be positive")
        if not 0 <= self.gripper_hysteresis < 1:
            raise ValueError(f"gripper_hysteresis must be in [0, 1), got {self.gripper_hysteresis}")


# robosuite's Panda in the world frame of the tabletop tasks (base at x = -0.56, table top at z = 0.8). The joint
# velocity bound applies to the commanded *target* step, which OSC tracks only partly within one period; at the
# Panda's own 2.175-2.61 rad/s it cut 54% of the scripted Lift expert's steps (and lengthened its episodes by 24%),
# at 4x it leaves the experts' actions (nearly) untouched while still bounding a runaway policy.
SIM_PANDA_LIMITS = SafetyLimits(workspace_low=(-0.45, -0.45, 0.80), workspace_high=(0.35, 0.45, 1.40),
                                joint_max_vel=tuple(4 * v for v in PANDA_JOINT_VEL))


@dataclass(frozen=True)
class MeasuredState:
    """What the filter needs to know about the arm now."""

    eef_pos: np.ndarray  # (3,) metres, base frame
    eef_quat: np.ndarray  # (4,) xyzw
    joint_pos: np.ndarray | None = None  # (n,) radians, or None when not measured


@dataclass(frozen=True)
class Hold:
    """Do not move this tick; ``reason`` is one line for the operator."""

    reason: str


@dataclass(frozen=True)
class SafeCommand:
    """A command that passed every stage."""

    action: np.ndarray  # (7,) the filtered step as a normalised delta (what the sim's OSC controller takes)
    gripper: float  # -1 open / +1 closed after hysteresis
    target_pos: np.ndarray | None = None  # (3,) absolute target, None without a measured pose
    target_quat: np.ndarray | None = None  # (4,) xyzw absolute target
    joint_target: np.ndarray | None = None  # (n,) with a kinematic model and measured joints
    interventions: tuple[str, ...] = field(default=())  # stages that changed the command, for diagnostics


class SafetyFilter:
    """Turns one normalised action into a bounded command, or a Hold with a reason."""

    def __init__(self, limits: SafetyLimits | None = None, kinematics: DHChain | None = None, armed: bool = True):
        self.limits = limits or SafetyLimits()
        self.kinematics = kinematics
        if kinematics is not None and kinematics.n_joints != len(self.limits.joint_lower):
            raise ValueError(f"kinematic model has {kinematics.n_joints} joints but the limits list "
                             f"{len(self.limits.joint_lower)}")
        lim = self.limits
        self._scale = np.array([lim.output_max_pos] * 3 + [lim.output_max_rot] * 3)
        # The limits as float lists once (see __call__).
        self._scale_f = self._scale.tolist()
        self._max_step_f = [min(k, m) for k, m in zip(self._scale_f, [lim.max_step_pos] * 3 + [lim.max_step_rot] * 3)]
        self._joint_low = [v + lim.joint_margin for v in lim.joint_lower]
        self._joint_high = [v - lim.joint_margin for v in lim.joint_upper]
        self._max_dq = [v * lim.control_dt for v in lim.joint_max_vel]
        self._armed = armed
        self._gripper: float | None = None  # latched gripper state; None until the first command

    # ------------------------------------------------------------------------------------------- arm / disarm
    @property
    def armed(self) -> bool:
        return self._armed

    def arm(self) -> None:
        """Allow commands again; the gripper latch restarts from the next action."""
        self._armed, self._gripper = True, None

    def disarm(self) -> None:
        self._armed = False

    # ------------------------------------------------------------------------------------------- the stages
    def __call__(self, action: np.ndarray, state: MeasuredState | None = None, obs_stamp: float | None = None,
                 now: float | None = None) -> SafeCommand | Hold:
        lim = self.limits
        if not self._armed:
            return Hold("disarmed: call the arm service to enable commands")
        # 1. NaN / shape. From here on plain floats: on 3-7 element vectors numpy's per-call overhead is most of the
        # cost, and this runs in every control tick (twice as fast as the numpy form, measured 10 ms after its
        # last call, as a tick runs).
        a = np.asarray(action, dtype=np.float64)
        if a.shape != (7,):
            return Hold(f"action has shape {a.shape}, expected (7,)")
        values = a.tolist()
        if not all(math.isfinite(v) for v in values):
            return Hold("action contains NaN or inf")
        problem = self._check_state(state)
        if problem:
            return Hold(problem)
        # 2. Observation age.
        if obs_stamp is not None and now is not None:
            age = now - obs_stamp
            if age > lim.max_obs_age_s:
                return Hold(f"observation is {age * 1e3:.0f} ms old (limit {lim.max_obs_age_s * 1e3:.0f} ms)")
            if age < -lim.max_obs_age_s:
                return Hold(f"observation is stamped {-age * 1e3:.0f} ms in the future: clock jump?")
        notes: list[str] = []
        # 3. Per-step delta clip.
        clipped = [min(max(v, -1.0), 1.0) for v in values[:6]]
        unclipped = [c * k for c, k in zip(clipped, self._scale_f)]
        step = [min(max(u, -m), m) for u, m in zip(unclipped, self._max_step_f)]  # metres / radians per axis
        if clipped != values[:6] or step != unclipped:
            notes.append("delta_clip")
        gripper = self._hysteresis(values[6])
        if state is None:  # no measured pose (e.g. a policy without proprioception): stages 4-6 need one
            return SafeCommand(action=self._normalised(step, gripper), gripper=gripper, interventions=tuple(notes))
        pos = np.asarray(state.eef_pos, dtype=np.float64).tolist()
        # 4-5. Integrate, then box the target; the step is re-clipped so leaving/returning is one step at a time.
        wanted = [p + d for p, d in zip(pos, step[:3])]
        boxed = [min(max(w, lo), hi) for w, lo, hi in zip(wanted, lim.workspace_low, lim.workspace_high)]
        if any(abs(b - w) > 1e-12 for b, w in zip(boxed, wanted)):
            notes.append("workspace")
            step[:3] = [min(max(b - p, -m), m) for b, p, m in zip(boxed, pos, self._max_step_f)]
        # 6. Joint position and velocity limits.
        joint_target = None
        if state.joint_pos is not None:
            q = np.asarray(state.joint_pos, dtype=np.float64).tolist()
            scale, dq, why = self._joint_scale(q, step)
            if scale < 1.0:
                notes.append(why)
                step = [d * scale for d in step]
            if dq is not None:
                joint_target = np.array([qi + scale * di for qi, di in zip(q, dq)])
        target_pos = np.array([p + d for p, d in zip(pos, step[:3])])
        target_quat = _rotate_by(step[3:], np.asarray(state.eef_quat, dtype=np.float64).tolist())
        return SafeCommand(action=self._normalised(step, gripper), gripper=gripper, target_pos=target_pos,
                           target_quat=np.array(target_quat), joint_target=joint_target, interventions=tuple(notes))

    def _normalised(self, step: list[float], gripper: float) -> np.ndarray:
        """The filtered step back in the policy's action space (and the gripper), as the command's action."""
        return np.array([d / k for d, k in zip(step, self._scale_f)] + [gripper])

    def hold_command(self, state: MeasuredState) -> SafeCommand:
        """Stay where the arm is: the measured pose as target, gripper unchanged (the watchdog's command)."""
        gripper = -1.0 if self._gripper is None else self._gripper
        joints = None if state.joint_pos is None else np.asarray(state.joint_pos, dtype=np.float64)
        return SafeCommand(action=np.concatenate([np.zeros(6), [gripper]]), gripper=gripper,
                           target_pos=np.asarray(state.eef_pos, dtype=np.float64),
                           target_quat=np.asarray(state.eef_quat, dtype=np.float64), joint_target=joints,
                           interventions=("hold",))

    def twist(self, command: SafeCommand) -> np.ndarray:
        """(6,) linear m/s and angular rad/s that cover the command's step in one period (MoveIt Servo)."""
        return command.action[:6] * self._scale / self.limits.control_dt

    def _check_state(self, state: MeasuredState | None) -> str | None:
        if state is None:
            return None
        pos, quat = np.asarray(state.eef_pos), np.asarray(state.eef_quat)
        if pos.shape != (3,) or quat.shape != (4,):
            return f"measured pose has shapes {pos.shape}/{quat.shape}, expected (3,)/(4,)"
        pose = pos.tolist() + quat.tolist()
        if not all(math.isfinite(v) for v in pose):
            return "measured pose contains NaN or inf"
        norm = math.sqrt(sum(v * v for v in pose[3:]))
        if abs(norm - 1.0) > 1e-2:
            return f"measured orientation is not a unit quaternion (norm {norm:.3f})"
        if state.joint_pos is not None:
            q = np.asarray(state.joint_pos)
            if q.shape != (len(self.limits.joint_lower),):
                return f"measured joints have shape {q.shape}, the limits list {len(self.limits.joint_lower)} joints"
            if not all(math.isfinite(v) for v in q.tolist()):
                return "measured joint positions contain NaN or inf"
        return None

    def _joint_scale(self, q: list[float], step: list[float]) -> tuple[float, list[float] | None, str]:
        """Largest uniform scale in [0, 1] of ``step`` that keeps every joint inside its position and velocity
        limits, the joint step at scale 1 (None without a kinematic model), and the name of the binding limit."""
        lower, upper = self._joint_low, self._joint_high
        if self.kinematics is None:
            outside = any(qi < lo or qi > hi for qi, lo, hi in zip(q, lower, upper))
            return (0.0, None, "joint_limits") if outside else (1.0, None, "")
        dq = self.kinematics.dls_step_floats(q, step)
        scale, why = 1.0, ""
        if any(abs(d) > m for d, m in zip(dq, self._max_dq)):
            scale = min(m / abs(d) for d, m in zip(dq, self._max_dq) if abs(d) > 1e-12)
            why = "joint_velocity"
        # Position: only motion that goes further out is limited; a joint outside its range may always return.
        for qi, d, lo, hi in zip(q, dq, lower, upper):
            if abs(d) <= 1e-12 or not (d > 0 and qi + d > hi or d < 0 and qi + d < lo):
                continue
            frac = min(max(((hi if d > 0 else lo) - qi) / d, 0.0), 1.0)
            if frac < scale:
                scale, why = frac, "joint_limits"
        return scale, dq, why

    def _hysteresis(self, value: float) -> float:
        h = self.limits.gripper_hysteresis
        if self._gripper is None:
            self._gripper = 1.0 if value > 0 else -1.0
        elif value > h:
            self._gripper = 1.0
        elif value < -h:
            self._gripper = -1.0
        return self._gripper


def _rotate_by(rotvec: list[float], quat: list[float]) -> list[float]:
    """Unit xyzw quaternion of rotating ``quat`` by the rotation vector ``rotvec`` (base frame), with w >= 0 so
    consecutive targets do not flip sign."""
    rx, ry, rz = rotvec
    angle = math.sqrt(rx * rx + ry * ry + rz * rz)
    if angle < 1e-12:
        ax, ay, az, aw = 0.0, 0.0, 0.0, 1.0
    else:
        s = math.sin(angle / 2.0) / angle
        ax, ay, az, aw = rx * s, ry * s, rz * s, math.cos(angle / 2.0)
    x, y, z, w = quat
    out = [aw * x + ax * w + ay * z - az * y, aw * y - ax * z + ay * w + az * x,
           aw * z + ax * y - ay * x + az * w, aw * w - ax * x - ay * y - az * z]
    norm = math.sqrt(sum(v * v for v in out))
    sign = -1.0 if out[3] < 0 else 1.0
    return [sign * v / norm for v in out]


class Watchdog:
    """Counts control periods since the last command; ``expired`` after ``periods`` of them."""

    def __init__(self, period_s: float, periods: int):
        if period_s <= 0 or periods < 1:
            raise ValueError("watchdog needs a positive period and at least one period")
        self.period_s, self.periods = period_s, periods
        self._last: float | None = None

    def feed(self, now: float) -> None:
        self._last = now

    def missed(self, now: float) -> int:
        """Whole periods since the last command (0 before the first one: nothing to hold yet)."""
        if self._last is None:
            return 0
        return max(0, int((now - self._last) / self.period_s + 1e-9))

    def expired(self, now: float) -> bool:
        return self.missed(now) >= self.periods
