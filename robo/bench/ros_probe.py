"""ROS plumbing for benchmarks and tests of the policy node: a child ROS process, an in-process probe that plays the
robot and records commands, a command safety checker and a fresh checkpoint maker. Real rclpy over DDS; nothing is
mocked."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
SIM_PARAMS = REPO / "hardware" / "robots" / "sim_panda_deploy.yaml"
MOCK_PARAMS = REPO / "launch" / "params" / "sim_mock.yaml"
LOWDIM = {"eef_pos": ((3,), "float32"), "eef_quat": ((4,), "float32"), "gripper_qpos": ((2,), "float32"),
          "object_state": ((10,), "float32")}
CAMERAS = {"agentview_rgb": ((84, 84, 3), "uint8"), "eye_in_hand_rgb": ((84, 84, 3), "uint8")}
HOME_Q = [0.0, 0.2, 0.0, -2.0, 0.0, 2.2, 0.8]
HOME_POS = np.array([-0.1, 0.0, 1.0])  # inside the sim workspace box
HOME_QUAT = np.array([1.0, 0.0, 0.0, 0.0])


def fresh_checkpoint(path: Path, obs_spec: dict[str, Any], n_action_steps: int = 8) -> Path:
    """A freshly initialised one-step consistency policy saved as a real checkpoint (for timing and plumbing)."""
    from policies import Normalizer, PolicySpec, make_policy, save_checkpoint

    rng = np.random.default_rng(0)
    data = {k: (rng.integers(0, 255, (4, *shape), dtype=np.uint8) if dtype == "uint8"
                else rng.normal(size=(64, *shape)).astype(dtype)) for k, (shape, dtype) in obs_spec.items()}
    data["action"] = rng.uniform(-1, 1, (64, 7)).astype(np.float32)
    config = {"denoiser": {"kind": "unet", "widths": [16, 32], "groups": 4},
              "encoder": {"lowdim_hidden": 32, "lowdim_features": 16, "rgb_base_channels": 8, "rgb_stages": 2,
                          "rgb_blocks_per_stage": 1, "rgb_groups": 4, "num_keypoints": 8, "rgb_features": 16}}
    spec = PolicySpec(obs_spec, 7, n_obs=2, horizon=16, n_action_steps=n_action_steps)
    policy = make_policy("consistency", spec, Normalizer.fit(data), config)
    save_checkpoint(path, policy, extra={"task": "Lift"})
    return path


# --------------------------------------------------------------------------------------------- processes
class RosProcess:
    """``python -m <module> --ros-args --params-file <file> -p k:=v ...`` as a child process, stopped with SIGINT."""

    def __init__(self, module: str, params_file: Path, overrides: dict[str, Any], log: Path):
        args = [sys.executable, "-m", module, "--ros-args", "--params-file", str(params_file)]
        for key, value in overrides.items():
            args += ["-p", f"{key}:={_ros_value(value)}"]
        self.log_path = log
        self._log = open(log, "w")
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(args, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT, env=env)

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mb(self) -> float:
        """Resident memory of the process and its children (the node's planner process), MB."""
        pids = [self.proc.pid]
        try:
            pids += [int(p) for p in Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()]
        except OSError:
            pass
        total = 0.0
        for pid in pids:
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) / 1024
            except OSError:  # a child that just exited
                pass
        return total

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def _ros_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_ros_value(v) if not isinstance(v, str) else f"'{v}'" for v in value) + "]"
    return str(value)


class Probe:
    """An in-process rclpy node (own Context, own executor thread) that plays the robot and records commands."""

    def __init__(self, image_keys: tuple[str, ...] = (), record_poses: bool = True):
        import rclpy
        from geometry_msgs.msg import PoseStamped
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
        from rclpy.signals import SignalHandlerOptions
        from sensor_msgs.msg import Image, JointState
        from std_msgs.msg import Float32MultiArray, Float64, String

        self.ctx = rclpy.Context()
        rclpy.init(context=self.ctx, signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node("robo_bench_probe", context=self.ctx)
        self.msgs = {"PoseStamped": PoseStamped, "JointState": JointState, "Image": Image,
                     "Float32MultiArray": Float32MultiArray}
        sensor = qos_profile_sensor_data
        self.joint_pub = self.node.create_publisher(JointState, "/joint_states", sensor)
        self.pose_pub = self.node.create_publisher(PoseStamped, "/eef_pose", sensor)
        self.object_pub = self.node.create_publisher(Float32MultiArray, "/object_state", sensor)
        self.image_pubs = {k: self.node.create_publisher(Image, f"/camera/{k.rsplit('_', 1)[0]}/color/image_raw", sensor)
                           for k in image_keys}
        keep = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE)
        self.commands: list[tuple[float, Any]] = []
        self.proposed: list[tuple[float, Any]] = []
        self.grippers: list[tuple[float, float]] = []
        self.diagnostics: list[dict[str, Any]] = []
        self.episodes: list[dict[str, Any]] = []
        self.poses: list[tuple[float, Any]] = []
        # Commands are timed by their arrival in this process's middleware (rmw's receipt stamp), not by when this
        # executor thread got round to the callback: the probe's own publishing holds the interpreter meanwhile,
        # and that wait is the harness's, not the node's.
        self.node.create_subscription(PoseStamped, "/cartesian_impedance_controller/target_pose",
                                      lambda m, info: self.commands.append((_arrival(info), m)), keep)
        self.node.create_subscription(PoseStamped, "/robo_policy_node/proposed/pose",
                                      lambda m, info: self.proposed.append((_arrival(info), m)), keep)
        self.node.create_subscription(Float64, "/gripper/width_command",
                                      lambda m: self.grippers.append((time.monotonic(), m.data)), keep)
        self.node.create_subscription(String, "/robo_policy_node/diagnostics",
                                      lambda m: self.diagnostics.append(json.loads(m.data)), 10)
        self.node.create_subscription(String, "/sim/episode", lambda m: self.episodes.append(json.loads(m.data)), 10)
        if record_poses:  # the arm's pose as a peer sees it (tests); a latency probe that publishes it skips this
            self.node.create_subscription(PoseStamped, "/eef_pose", lambda m: self.poses.append((time.monotonic(), m)),
                                          sensor)
        self.executor = SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(self.node)
        self._running = True
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()
        self.sent: dict[str, tuple[float, np.ndarray, np.ndarray]] = {}  # pose frame_id -> (time, pos, quat)

    def _spin(self) -> None:
        while self._running and self.ctx.ok():
            self.executor.spin_once(timeout_sec=0.05)

    def call(self, service: str, value: bool, timeout_s: float = 20.0) -> bool:
        from std_srvs.srv import SetBool

        client = self.node.create_client(SetBool, service)
        if not client.wait_for_service(timeout_sec=timeout_s):
            return False
        future = client.call_async(SetBool.Request(data=value))
        deadline = time.monotonic() + timeout_s
        while not future.done() and time.monotonic() < deadline:
            time.sleep(0.01)
        return future.done() and future.result().success

    def publish_state(self, seq: int, pos: np.ndarray = HOME_POS, quat: np.ndarray = HOME_QUAT,
                      joints: list[float] | None = None, names: list[str] | None = None, stamp_s: float | None = None,
                      object_state: np.ndarray | None = None) -> None:
        """One joint state + pose (+ object state); the pose's frame_id is ``s<seq>`` and is remembered."""
        stamp = self.node.get_clock().now().to_msg() if stamp_s is None else time_msg(stamp_s)
        js = self.msgs["JointState"]()
        js.header.stamp = stamp
        js.name = names if names is not None else [f"panda_joint{i}" for i in range(1, 8)] + [
            "panda_finger_joint1", "panda_finger_joint2"]
        js.position = [float(v) for v in (joints if joints is not None else HOME_Q + [0.04, -0.04])]
        self.joint_pub.publish(js)
        pose = self.msgs["PoseStamped"]()
        pose.header.stamp, pose.header.frame_id = stamp, f"s{seq}"
        p, o = pose.pose.position, pose.pose.orientation
        p.x, p.y, p.z = (float(v) for v in pos)
        o.x, o.y, o.z, o.w = (float(v) for v in quat)
        self.sent[f"s{seq}"] = (time.monotonic(), np.asarray(pos, float), np.asarray(quat, float))
        self.pose_pub.publish(pose)
        obj = np.zeros(10, np.float32) if object_state is None else object_state
        self.object_pub.publish(self.msgs["Float32MultiArray"](data=[float(v) for v in obj]))

    def publish_images(self, rng: np.random.Generator) -> None:
        from hardware.ros_convert import numpy_to_image

        for key, pub in self.image_pubs.items():
            msg = numpy_to_image(rng.integers(0, 255, (84, 84, 3), dtype=np.uint8), self.msgs["Image"]())
            msg.header.stamp = self.node.get_clock().now().to_msg()
            pub.publish(msg)

    def check_alone(self, robots: int, discovery_s: float = 0.0) -> None:
        """Raise unless this ROS domain holds exactly ``robots`` robot-state publishers besides the probe (0 when
        the probe plays the robot, 1 with the sim mock). A sim mock or driver left running by an earlier run would
        otherwise feed the node its state, execute its commands and answer /sim/reset beside the one under test.
        ``discovery_s``: how long to give a stranger to be discovered (when nothing else is expected yet)."""
        def others() -> int:
            return self.node.count_publishers("/joint_states") - 1  # the probe publishes the topic itself
        wait_for(lambda: others() > robots, discovery_s)
        if others() != robots:
            domain = os.environ.get("ROS_DOMAIN_ID", "0")
            raise RuntimeError(f"ROS_DOMAIN_ID={domain} has {others()} publisher(s) of /joint_states where {robots} "
                               f"belong to this run: another sim mock or driver runs in this domain (pgrep -af "
                               f"'sim.ros_mock|hardware.ros_node'); stop it or choose another ROS_DOMAIN_ID")

    def close(self) -> None:
        import rclpy

        self._running = False
        self._thread.join(timeout=2)
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.ctx)


def _arrival(info: Any) -> float:
    """When a message reached the middleware, on time.monotonic() (now, if the rmw gave no receipt stamp)."""
    received_ns = info.get("received_timestamp", 0) if isinstance(info, dict) else 0
    now = time.monotonic()
    return min(now, received_ns * 1e-9 + now - time.time()) if received_ns > 0 else now


def time_msg(seconds: float) -> Any:
    from builtin_interfaces.msg import Time

    from hardware.ros_convert import sec_to_stamp

    return sec_to_stamp(max(0.0, seconds), Time())


def wait_for(predicate: Any, timeout_s: float, step_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step_s)
    return bool(predicate())


def unsafe_commands(commands: list[tuple[float, Any]], sent: dict[str, tuple[float, np.ndarray, np.ndarray]],
                    limits: Any) -> list[str]:
    """One line per command that breaks a limit: non-finite, a step beyond the per-axis limit from the pose it
    was computed from, a rotation beyond the per-step limit, a target further outside the workspace box than the
    measured pose, or a source pose that was never published (a command from nowhere)."""
    from hardware.ros_convert import MessageError, pose_to_arrays

    lo, hi = np.asarray(limits.workspace_low), np.asarray(limits.workspace_high)
    bad = []
    for _, msg in commands:
        try:
            pos, quat = pose_to_arrays(msg)
        except MessageError as err:
            bad.append(f"malformed command: {err}")
            continue
        source = sent.get(msg.header.frame_id)
        if source is None:
            bad.append(f"command from unknown pose '{msg.header.frame_id}'")
            continue
        _, src_pos, src_quat = source
        if np.any(np.abs(pos - src_pos) > min(limits.output_max_pos, limits.max_step_pos) + 1e-6):
            bad.append(f"step {np.abs(pos - src_pos).max():.4f} m > {min(limits.output_max_pos, limits.max_step_pos)}")
        angle = 2 * np.arccos(min(1.0, abs(float(np.dot(quat, src_quat / np.linalg.norm(src_quat))))))
        if angle > np.sqrt(3) * min(limits.output_max_rot, limits.max_step_rot) + 1e-6:
            bad.append(f"rotation {angle:.3f} rad per step")
        outside_now = np.maximum(lo - src_pos, 0) + np.maximum(src_pos - hi, 0)
        outside_cmd = np.maximum(lo - pos, 0) + np.maximum(pos - hi, 0)
        if np.any(outside_cmd > outside_now + 1e-6):
            bad.append(f"target {pos.round(3).tolist()} leaves the workspace box")
    return bad
