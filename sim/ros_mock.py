"""A ROS 2 node that stands in for the arm, its controllers and its cameras, around the robosuite sim (SimEnv).

    python -m sim.ros_mock --ros-args --params-file launch/params/sim_mock.yaml

It publishes what real drivers publish, under the same names and types: sensor_msgs/JointState (arm + finger
joints), the measured end-effector pose (geometry_msgs/PoseStamped), camera images (sensor_msgs/Image, rgb8 and
16UC1 millimetres on RealSense-style topics) and, standing in for a perception node, the task's object state
(std_msgs/Float32MultiArray). It executes the same command messages the real controllers take, at the controller
rate: PoseStamped targets (Cartesian impedance), JointTrajectory (joint_trajectory_controller), TwistStamped
(MoveIt Servo) and a Float64 gripper width. Each command becomes the OSC delta that reaches it in one step; a
command older than ``command_timeout_s`` is not executed (the arm holds), as a controller's cmd_timeout does.

Episodes end on success or at the horizon; each one is reported on ``/sim/episode`` (std_msgs/String, JSON, with
the mock's horizon and process id) and the next starts with the next seed. ``/sim/reset`` (std_srvs/Trigger) ends
the current episode unreported and starts the seed sequence over from ``seed``: the mock steps from the moment it
starts, so a run that should see the same seeded episodes as ``robo eval --seed <seed>`` resets once the policy node
is commanding. Its answer names the episode, seed and process ("episode N, seed S, mock P"): a second mock left
running in the same ROS domain also answers and reports, and the process id tells its episodes apart.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from hardware.arm import OUTPUT_MAX_POS_M, OUTPUT_MAX_ROT_RAD
from hardware.kinematics import FRANKA, rotvec_of
from hardware.ros_convert import MessageError, fill_pose, numpy_to_image, pose_to_arrays

NODE_NAME = "robo_sim_mock"


@dataclass
class MockConfig:
    """Parameters of the sim mock (ROS parameters of the same names)."""

    task: str = "Lift"  # robosuite task (sim.env.TASKS)
    control_hz: float = 20.0  # controller / sim step rate
    seed: int = 10_000  # seed of the first episode (and of the first after /sim/reset); the next ones count up
    horizon: int = 0  # steps per episode; 0 = the task's default
    cameras: list[str] = dataclasses.field(default_factory=list)  # robosuite cameras, e.g. [agentview]
    image_size: int = 84  # square camera images
    depth: bool = False  # also publish aligned depth (16UC1, millimetres)
    joint_states_topic: str = "/joint_states"
    eef_pose_topic: str = "/eef_pose"
    object_state_topic: str = "/object_state"  # the task's object state, as a perception node would publish it
    image_topic_format: str = "/camera/{camera}/color/image_raw"  # {camera}: observation prefix (agentview)
    depth_topic_format: str = "/camera/{camera}/aligned_depth_to_color/image_raw"
    target_pose_topic: str = "/cartesian_impedance_controller/target_pose"
    joint_trajectory_topic: str = "/joint_trajectory_controller/joint_trajectory"
    twist_topic: str = "/servo_node/delta_twist_cmds"
    gripper_topic: str = "/gripper/width_command"
    gripper_open_width: float = 0.08  # a width above the middle opens, below closes
    gripper_closed_width: float = 0.0
    command_timeout_s: float = 0.25  # a command older than this is not executed: the arm holds
    frame_id: str = "world"  # frame of published poses


def command_to_action(kind: str, msg: Any, eef_pos: np.ndarray, eef_quat: np.ndarray, joint_pos: np.ndarray,
                      dt: float, joint_names: list[str] | None = None, chain: Any = None) -> np.ndarray:
    """The OSC delta (6,) in [-1, 1] that executes one arm command within one step. A joint trajectory is read by
    ``joint_names`` (default the Panda's) through ``chain`` (default Franka); the session importer passes the
    robot's own."""
    step = np.zeros(6)
    if kind == "pose":
        pos, quat = pose_to_arrays(msg)
        step[:3] = pos - eef_pos
        step[3:] = rotvec_of(_quat_to_mat(quat) @ _quat_to_mat(eef_quat).T)
    elif kind == "twist":
        t = msg.twist
        step[:] = np.array([t.linear.x, t.linear.y, t.linear.z, t.angular.x, t.angular.y, t.angular.z]) * dt
    elif kind == "joint_trajectory":
        if not msg.points:
            raise MessageError("JointTrajectory has no points")
        index = {n: i for i, n in enumerate(msg.joint_names)}
        names = joint_names or [f"panda_joint{i + 1}" for i in range(7)]
        missing = [n for n in names if n not in index]
        if missing:
            raise MessageError(f"JointTrajectory lacks joints {missing[:3]}")
        target = np.array([msg.points[-1].positions[index[n]] for n in names])
        chain = chain or FRANKA
        now_t, goal_t = chain.forward(joint_pos), chain.forward(target)
        step[:3] = goal_t[:3, 3] - now_t[:3, 3]
        step[3:] = rotvec_of(goal_t[:3, :3] @ now_t[:3, :3].T)
    if not np.all(np.isfinite(step)):
        raise MessageError(f"{kind} command contains NaN or inf")
    return np.clip(step / np.array([OUTPUT_MAX_POS_M] * 3 + [OUTPUT_MAX_ROT_RAD] * 3), -1.0, 1.0)


def _quat_to_mat(q: np.ndarray) -> np.ndarray:
    x, y, z, w = q
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def _node_base() -> type:
    from rclpy.node import Node

    return Node


class SimMock(_node_base()):  # type: ignore[misc]
    def __init__(self, context: Any = None, overrides: dict[str, Any] | None = None):
        from geometry_msgs.msg import PoseStamped, TwistStamped
        from rcl_interfaces.msg import ParameterDescriptor
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
        from sensor_msgs.msg import Image, JointState
        from std_msgs.msg import Float32MultiArray, Float64, String
        from std_srvs.srv import Trigger
        from trajectory_msgs.msg import JointTrajectory

        from sim.env import CAMERA_KEY_PREFIX, EnvConfig, SimEnv

        super().__init__(NODE_NAME, context=context)
        values = {}
        for f in dataclasses.fields(MockConfig):
            default = getattr(MockConfig(), f.name)
            value = self.declare_parameter(f.name, default, ParameterDescriptor(dynamic_typing=True)).value
            value = default if value is None else value  # an empty YAML list arrives untyped (None)
            values[f.name] = list(value) if isinstance(default, list) else value
        values.update(overrides or {})
        self.config = cfg = MockConfig(**values)
        self.env = SimEnv(EnvConfig(task=cfg.task, cameras=tuple(cfg.cameras), image_height=cfg.image_size,
                                    image_width=cfg.image_size, depth=cfg.depth, control_freq=int(cfg.control_hz),
                                    horizon=cfg.horizon or None))
        self.episode, self.steps, self.results = 0, 0, []
        self._first_episode = 0  # episode that used `seed`; /sim/reset moves it to the episode it starts
        self.obs, _ = self.env.reset(seed=cfg.seed)
        self._commands: dict[str, tuple[Any, float]] = {}
        self._gripper = -1.0
        self._msgs = (PoseStamped, JointState, Image, Float32MultiArray, String)
        sensor = qos_profile_sensor_data
        self._joint_pub = self.create_publisher(JointState, cfg.joint_states_topic, sensor)
        self._pose_pub = self.create_publisher(PoseStamped, cfg.eef_pose_topic, sensor)
        self._object_pub = self.create_publisher(Float32MultiArray, cfg.object_state_topic, sensor)
        self._image_pubs = {}
        for cam in cfg.cameras:
            prefix = CAMERA_KEY_PREFIX[cam]
            self._image_pubs[f"{prefix}_rgb"] = self.create_publisher(
                Image, cfg.image_topic_format.format(camera=prefix), sensor)
            if cfg.depth:
                self._image_pubs[f"{prefix}_depth"] = self.create_publisher(
                    Image, cfg.depth_topic_format.format(camera=prefix), sensor)
        cmd_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE)
        for kind, msg_type, topic in (("pose", PoseStamped, cfg.target_pose_topic),
                                      ("joint_trajectory", JointTrajectory, cfg.joint_trajectory_topic),
                                      ("twist", TwistStamped, cfg.twist_topic)):
            self.create_subscription(msg_type, topic, lambda m, k=kind: self._store(k, m), cmd_qos)
        self.create_subscription(Float64, cfg.gripper_topic, self._on_gripper, cmd_qos)
        self._episode_pub = self.create_publisher(String, "/sim/episode", 10)
        self.create_service(Trigger, "/sim/reset", self._on_reset)
        self.counters = {"steps": 0, "executed": 0, "held": 0, "rejected": 0}
        self._publish_state()
        self.create_timer(1.0 / cfg.control_hz, self._step)
        self.get_logger().info(f"sim mock: {cfg.task} at {cfg.control_hz} Hz, horizon {self.env.horizon}, "
                               f"cameras {cfg.cameras}")

    def _store(self, kind: str, msg: Any) -> None:
        self._commands[kind] = (msg, time.monotonic())  # callbacks only store; the step timer executes

    def _on_gripper(self, msg: Any) -> None:
        if np.isfinite(msg.data):
            middle = (self.config.gripper_open_width + self.config.gripper_closed_width) / 2
            closing = (msg.data < middle) == (self.config.gripper_closed_width < self.config.gripper_open_width)
            self._gripper = 1.0 if closing else -1.0

    def _on_reset(self, request: Any, response: Any) -> Any:
        self._new_episode(restart=True)
        response.success = True
        response.message = f"episode {self.episode}, seed {self._seed()}, mock {os.getpid()}"
        return response

    def _seed(self) -> int:
        return self.config.seed + self.episode - self._first_episode

    def _new_episode(self, restart: bool = False) -> None:
        self.episode += 1
        if restart:
            self._first_episode = self.episode
        self.steps = 0
        self._commands.clear()
        self._gripper = -1.0
        self.obs, _ = self.env.reset(seed=self._seed())

    def _step(self) -> None:
        now = time.monotonic()
        arm = np.zeros(6)
        fresh = [(t, k, m) for k, (m, t) in self._commands.items() if now - t <= self.config.command_timeout_s]
        if fresh:
            _, kind, msg = max(fresh, key=lambda item: item[0])
            try:
                arm = command_to_action(kind, msg, self.obs["eef_pos"].astype(float), self.obs["eef_quat"].astype(float),
                                        self.obs["joint_pos"].astype(float), 1.0 / self.config.control_hz)
                self.counters["executed"] += 1
            except (MessageError, KeyError, IndexError):
                self.counters["rejected"] += 1
        else:
            self.counters["held"] += 1
        self.obs, _, terminated, truncated, info = self.env.step(np.r_[arm, self._gripper])
        self.steps += 1
        self.counters["steps"] += 1
        if terminated or truncated:
            result = {"episode": self.episode, "seed": self._seed(), "success": bool(info["success"]),
                      "steps": self.steps, "horizon": self.env.horizon, "mock": os.getpid()}
            self.results.append(result)
            self._episode_pub.publish(self._msgs[4](data=json.dumps(result)))
            self._new_episode()
        self._publish_state()

    def _publish_state(self) -> None:
        PoseStamped, JointState, Image, Float32MultiArray, _ = self._msgs
        stamp = self.get_clock().now().to_msg()
        joints = JointState()
        joints.header.stamp = stamp
        joints.name = [f"panda_joint{i}" for i in range(1, 8)] + ["panda_finger_joint1", "panda_finger_joint2"]
        joints.position = [float(v) for v in np.r_[self.obs["joint_pos"], self.obs["gripper_qpos"]]]
        self._joint_pub.publish(joints)
        pose = fill_pose(PoseStamped(), self.obs["eef_pos"], self.obs["eef_quat"])
        pose.header.stamp, pose.header.frame_id = stamp, self.config.frame_id
        self._pose_pub.publish(pose)
        self._object_pub.publish(Float32MultiArray(data=[float(v) for v in self.obs["object_state"]]))
        for key, pub in self._image_pubs.items():
            image = numpy_to_image(self.obs[key], Image())
            image.header.stamp, image.header.frame_id = stamp, key
            pub.publish(image)

    def destroy_node(self) -> None:
        if getattr(self, "env", None) is not None:
            self.env.close()
        super().destroy_node()


def main(argv: list[str] | None = None) -> int:
    from hardware.ros_spin import run_node

    return run_node(SimMock, argv)


if __name__ == "__main__":
    sys.exit(main())
