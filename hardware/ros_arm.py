"""`ArmInterface` over ROS 2 topics (rclpy), for arms driven by a Cartesian impedance/pose controller.

Design (what careful deployments do): subscription callbacks only store the latest message with its local
receipt time; all decisions (staleness, integration) happen in `read_state()`/`send_command()` on the caller's
thread. rclpy runs in its own Context and executor thread so several RosArm instances, or a test that inits
and shuts down repeatedly, never touch the global default context.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from hardware.arm import (
    N_ARM_JOINTS,
    N_GRIPPER_JOINTS,
    OUTPUT_MAX_POS_M,
    OUTPUT_MAX_ROT_RAD,
    ArmState,
    StaleStateError,
    integrate_action,
    validate_action,
)


class ArmNotReadyError(TimeoutError, RuntimeError):
    """The arm sent no usable state (or nobody listens to its command topics) in time. A TimeoutError for callers
    that wait and retry; a RuntimeError so the command line prints it as one line."""


def _default_arm_joints() -> list[str]:
    return [f"panda_joint{i}" for i in range(1, N_ARM_JOINTS + 1)]


def _default_gripper_joints() -> list[str]:
    return ["panda_finger_joint1", "panda_finger_joint2"]


@dataclass
class RosArmConfig:
    """Topics, joint names and safety limits of a ROS 2 arm."""

    joint_states_topic: str = "/joint_states"  # sensor_msgs/JointState; arm and gripper may publish separately
    eef_pose_topic: str = "/eef_pose"  # geometry_msgs/PoseStamped, measured end-effector pose in the base frame
    target_pose_topic: str = "/cartesian_target"  # geometry_msgs/PoseStamped, absolute target we publish
    gripper_command_topic: str = "/gripper_command"  # std_msgs/Float64, commanded finger opening width (m)
    joint_names: list[str] = field(default_factory=_default_arm_joints)  # 7 arm joints, in observation order
    gripper_joint_names: list[str] = field(default_factory=_default_gripper_joints)  # 2 finger joints
    max_state_age_s: float = 0.2  # older state (by local receipt time) raises StaleStateError; ~4 periods at 20 Hz
    output_max_pos: float = OUTPUT_MAX_POS_M  # metres per unit action per step (robosuite OSC)
    output_max_rot: float = OUTPUT_MAX_ROT_RAD  # radians per unit action per step (robosuite OSC)
    gripper_open_width_m: float = 0.08  # width sent for gripper action -1 (Panda hand fully open)
    gripper_closed_width_m: float = 0.0  # width sent for gripper action +1
    base_frame: str = ""  # frame_id for targets; "" reuses the frame_id of the measured pose
    node_name: str = "robo_ros_arm"  # ROS node name; must be unique per process group on the domain
    domain_id: Optional[int] = None  # ROS_DOMAIN_ID for this arm's own Context; None uses the environment


class RosArm:
    """Reads arm state from ROS topics and publishes integrated Cartesian targets + gripper widths."""

    def __init__(self, config: RosArmConfig) -> None:
        if len(config.joint_names) != N_ARM_JOINTS:
            raise ValueError(f"joint_names must list {N_ARM_JOINTS} joints, got {len(config.joint_names)}")
        if len(config.gripper_joint_names) != N_GRIPPER_JOINTS:
            raise ValueError(f"gripper_joint_names must list {N_GRIPPER_JOINTS} joints")
        self.config = config
        self._lock = threading.Lock()
        # joint name -> (position, local monotonic receipt time)
        self._joints: dict[str, tuple[float, float]] = {}
        self._pose: Optional[tuple[Any, float]] = None  # (PoseStamped, local monotonic receipt time)
        self._ctx: Any = None
        self._node: Any = None
        self._executor: Any = None
        self._thread: Optional[threading.Thread] = None
        self._running = False

    # ----------------------------------------------------------------------------------------------- lifecycle
    def start(self) -> "RosArm":
        import rclpy  # lazy: `import hardware` must work without the ros extra
        from geometry_msgs.msg import PoseStamped
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
        from rclpy.signals import SignalHandlerOptions
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Float64

        if self._running:
            return self
        self._ctx = rclpy.Context()
        # No signal handlers: the application (CLI, pytest) owns SIGINT, not this library.
        rclpy.init(context=self._ctx, domain_id=self.config.domain_id, signal_handler_options=SignalHandlerOptions.NO)
        self._node = rclpy.create_node(self.config.node_name, context=self._ctx)
        # Best-effort subscriptions match both best-effort and reliable publishers; a late state sample is
        # useless anyway, so there is nothing to gain from retransmission.
        self._node.create_subscription(JointState, self.config.joint_states_topic, self._on_joints, qos_profile_sensor_data)
        self._node.create_subscription(PoseStamped, self.config.eef_pose_topic, self._on_pose, qos_profile_sensor_data)
        # Reliable, keep-last-1 commands: only the newest target matters, but it must not be silently dropped.
        cmd_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE)
        self._target_pub = self._node.create_publisher(PoseStamped, self.config.target_pose_topic, cmd_qos)
        self._gripper_pub = self._node.create_publisher(Float64, self.config.gripper_command_topic, cmd_qos)
        self._PoseStamped, self._Float64 = PoseStamped, Float64
        self._executor = SingleThreadedExecutor(context=self._ctx)
        self._executor.add_node(self._node)
        self._running = True
        self._thread = threading.Thread(target=self._spin, name="ros_arm_spin", daemon=True)
        self._thread.start()
        return self

    def _spin(self) -> None:
        # spin_once with a timeout (not spin()) so stop() can end the loop without shutting the context first.
        while self._running and self._ctx.ok():
            self._executor.spin_once(timeout_sec=0.05)

    def stop(self) -> None:
        import rclpy

        if not self._running:
            return
        self._running = False
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        self._executor.shutdown()
        self._node.destroy_node()
        rclpy.try_shutdown(context=self._ctx)
        self._thread = None

    def __enter__(self) -> "RosArm":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----------------------------------------------------------------------------------------------- callbacks
    def _on_joints(self, msg: Any) -> None:
        now = time.monotonic()
        with self._lock:
            for name, pos in zip(msg.name, msg.position):
                self._joints[name] = (float(pos), now)

    def _on_pose(self, msg: Any) -> None:
        now = time.monotonic()
        with self._lock:
            self._pose = (msg, now)

    # ----------------------------------------------------------------------------------------------- interface
    def read_state(self) -> ArmState:
        """Latest state; raises StaleStateError if any required part is missing or too old."""
        cfg = self.config
        now = time.monotonic()
        with self._lock:
            pose = self._pose
            joints = dict(self._joints)
        if pose is None:
            raise StaleStateError(f"no end-effector pose received on {cfg.eef_pose_topic}")
        msg, t_pose = pose
        if now - t_pose > cfg.max_state_age_s:
            raise StaleStateError(
                f"end-effector pose on {cfg.eef_pose_topic} is {now - t_pose:.3f}s old (max {cfg.max_state_age_s}s)"
            )
        positions = []
        for name in list(cfg.joint_names) + list(cfg.gripper_joint_names):
            if name not in joints:
                raise StaleStateError(f"joint '{name}' never received on {cfg.joint_states_topic}")
            pos, t = joints[name]
            if now - t > cfg.max_state_age_s:
                raise StaleStateError(
                    f"joint '{name}' on {cfg.joint_states_topic} is {now - t:.3f}s old (max {cfg.max_state_age_s}s)"
                )
            positions.append(pos)
        p, o = msg.pose.position, msg.pose.orientation
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        return ArmState(
            stamp_s=stamp if stamp > 0 else time.time(),  # drivers that leave the stamp zero: use local time
            eef_pos=np.array([p.x, p.y, p.z], dtype=np.float32),
            eef_quat=np.array([o.x, o.y, o.z, o.w], dtype=np.float32),
            gripper_qpos=np.array(positions[N_ARM_JOINTS:], dtype=np.float32),
            joint_pos=np.array(positions[:N_ARM_JOINTS], dtype=np.float32),
        )

    def gripper_width(self, gripper_action: float) -> float:
        """Linear map of the gripper action: -1 -> open width, +1 -> closed width."""
        cfg = self.config
        frac = (float(np.clip(gripper_action, -1.0, 1.0)) + 1.0) / 2.0
        return cfg.gripper_open_width_m + frac * (cfg.gripper_closed_width_m - cfg.gripper_open_width_m)

    def send_command(self, action: np.ndarray) -> None:
        """Integrate a normalised delta onto the latest measured pose and publish target + gripper width.

        Integrating onto the measured pose (not the previous target) bounds the commanded jump to one step's
        output_max even if the controller lags; a stale pose raises instead of commanding from old data.
        """
        if not self._running:
            raise RuntimeError("RosArm.send_command called before start()")
        a = validate_action(action)
        with self._lock:
            pose = self._pose
        if pose is None or time.monotonic() - pose[1] > self.config.max_state_age_s:
            raise StaleStateError(f"refusing to command: no fresh pose on {self.config.eef_pose_topic}")
        msg = pose[0]
        p, o = msg.pose.position, msg.pose.orientation
        pos, quat = integrate_action(
            np.array([p.x, p.y, p.z]), np.array([o.x, o.y, o.z, o.w]), a, self.config.output_max_pos, self.config.output_max_rot
        )
        target = self._PoseStamped()
        target.header.stamp = self._node.get_clock().now().to_msg()
        target.header.frame_id = self.config.base_frame or msg.header.frame_id
        target.pose.position.x, target.pose.position.y, target.pose.position.z = (float(v) for v in pos)
        (target.pose.orientation.x, target.pose.orientation.y, target.pose.orientation.z, target.pose.orientation.w) = (
            float(v) for v in quat
        )
        self._target_pub.publish(target)
        self._gripper_pub.publish(self._Float64(data=self.gripper_width(a[6])))

    def wait_until_ready(self, timeout_s: float = 10.0) -> None:
        """Block until fresh state arrives and both command topics have a subscriber (DDS discovery is async).

        Commands published before the driver's subscription is matched are lost, so callers should wait here once
        after start().
        """
        deadline = time.monotonic() + timeout_s
        last_err: Exception | None = None
        while time.monotonic() < deadline:
            try:
                self.read_state()
                if self._target_pub.get_subscription_count() > 0 and self._gripper_pub.get_subscription_count() > 0:
                    return
                last_err = RuntimeError(f"nothing subscribes to {self.config.target_pose_topic} and "
                                        f"{self.config.gripper_command_topic} (is the controller loaded?)")
            except StaleStateError as e:
                last_err = e
            time.sleep(0.02)
        raise ArmNotReadyError(self._not_ready_message(timeout_s, last_err))

    def _not_ready_message(self, timeout_s: float, last_err: Exception | None) -> str:
        """One line: what was missing, and the usual causes (driver not running, another ROS_DOMAIN_ID, topics)."""
        domain = self.config.domain_id if self.config.domain_id is not None else os.environ.get("ROS_DOMAIN_ID", "0")
        return (f"the arm is not ready after {timeout_s:g} s ({last_err}): start the arm's ROS 2 driver and "
                f"controller, check it runs on ROS_DOMAIN_ID={domain} like this process, and that the topics in the "
                f"robot config match its launch files (`ros2 topic list`)")
