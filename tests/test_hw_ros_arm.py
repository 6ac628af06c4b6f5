"""RosArm against a fake arm driver in another process, over real DDS on loopback."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

# Must be in the environment before any rclpy Context is initialised (in this process and the child).
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
DOMAIN_ID = 1 + os.getpid() % 100  # distinct per test process so parallel runs do not cross-talk
os.environ["ROS_DOMAIN_ID"] = str(DOMAIN_ID)

rclpy = pytest.importorskip("rclpy")

from hardware.arm import StaleStateError, axis_angle_to_quat, quat_multiply  # noqa: E402
from hardware.ros_arm import RosArm, RosArmConfig  # noqa: E402

pytestmark = pytest.mark.ros
FAKE_ARM = Path(__file__).with_name("ros_fake_arm.py")


class FakeArmProcess:
    """The driver subprocess plus a reader thread that turns its JSON stdout lines into a queue."""

    def __init__(self, domain_id: int) -> None:
        # The child inherits the env (discovery range, and the ROS wheels' bootstrap guard + library path).
        self.proc = subprocess.Popen(
            [sys.executable, str(FAKE_ARM), "--domain-id", str(domain_id), "--rate", "100"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
        )
        self.lines: queue.Queue[dict] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.expect("ready", timeout=20.0)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))

    def expect(self, kind: str, timeout: float = 5.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                msg = self.lines.get(timeout=0.1)
            except queue.Empty:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"fake arm exited: {self.proc.stderr.read() if self.proc.stderr else ''}")
                continue
            if msg["type"] == kind:
                return msg
        raise TimeoutError(f"no '{kind}' line from the fake arm within {timeout}s")

    def send(self, cmd: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        assert self.expect("ack")["cmd"] == cmd

    def close(self) -> None:
        try:
            self.send("quit")
        except Exception:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def arm_config(**kw) -> RosArmConfig:
    return RosArmConfig(
        joint_states_topic="/fake_arm/joint_states",
        eef_pose_topic="/fake_arm/eef_pose",
        target_pose_topic="/fake_arm/cartesian_target",
        gripper_command_topic="/fake_arm/gripper_command",
        domain_id=DOMAIN_ID,
        **kw,
    )


@pytest.fixture(scope="module")
def fake_arm():
    proc = FakeArmProcess(DOMAIN_ID)
    yield proc
    proc.close()


@pytest.fixture
def ros_arm(fake_arm):
    arm = RosArm(arm_config(max_state_age_s=0.3)).start()
    arm.wait_until_ready(timeout_s=15.0)
    yield arm
    arm.stop()


def test_read_state_matches_driver(ros_arm):
    state = ros_arm.read_state()
    obs = state.as_observation()
    np.testing.assert_allclose(obs["joint_pos"], [0.0, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785], atol=1e-6)
    assert set(obs) == {"eef_pos", "eef_quat", "gripper_qpos", "joint_pos"}
    assert all(v.dtype == np.float32 for v in obs.values())
    assert obs["gripper_qpos"].shape == (2,) and obs["eef_quat"].shape == (4,)
    assert state.stamp_s > 1e9  # header stamp from the driver's clock, not a zero default


def test_send_command_publishes_integrated_target(ros_arm, fake_arm):
    before = ros_arm.read_state()
    action = np.array([1.0, -0.5, 0.2, 0.0, 0.0, 0.4, 1.0], dtype=np.float32)
    ros_arm.send_command(action)
    target = fake_arm.expect("target")
    grip = fake_arm.expect("gripper")
    np.testing.assert_allclose(target["pos"], before.eef_pos + np.array([0.05, -0.025, 0.01]), atol=1e-6)
    expected_q = quat_multiply(axis_angle_to_quat([0.0, 0.0, 0.2]), before.eef_quat.astype(np.float64))
    expected_q *= np.sign(expected_q[3]) or 1.0
    np.testing.assert_allclose(target["quat"], expected_q, atol=1e-6)
    assert target["frame_id"] == "panda_link0"
    assert grip["width"] == pytest.approx(0.0)  # +1 = close
    # The driver tracks the target; the next command must integrate onto the *new* measured pose.
    deadline = time.monotonic() + 3.0
    while np.linalg.norm(ros_arm.read_state().eef_pos - np.asarray(target["pos"])) > 1e-6:
        assert time.monotonic() < deadline, "measured pose never followed the target"
        time.sleep(0.01)
    ros_arm.send_command(np.array([0, 0, -1.0, 0, 0, 0, -1.0]))
    second = fake_arm.expect("target")
    np.testing.assert_allclose(second["pos"], np.asarray(target["pos"]) + [0, 0, -0.05], atol=1e-6)
    assert fake_arm.expect("gripper")["width"] == pytest.approx(0.08)


def test_rejects_bad_actions(ros_arm):
    with pytest.raises(ValueError, match="shape"):
        ros_arm.send_command(np.zeros(6))
    with pytest.raises(ValueError, match="NaN"):
        ros_arm.send_command(np.array([np.nan, 0, 0, 0, 0, 0, 0]))


def test_staleness_when_driver_stops_publishing(ros_arm, fake_arm):
    ros_arm.read_state()
    fake_arm.send("pause")
    try:
        time.sleep(0.5)
        with pytest.raises(StaleStateError, match="old"):
            ros_arm.read_state()
        with pytest.raises(StaleStateError):
            ros_arm.send_command(np.zeros(7))
    finally:
        fake_arm.send("resume")
    ros_arm.wait_until_ready(timeout_s=5.0)  # recovers as soon as fresh state flows again


def test_never_received_is_stale():
    # A topic nobody publishes: the error must say so in one line instead of returning zeros.
    arm = RosArm(arm_config(max_state_age_s=0.3))
    arm.config.eef_pose_topic = "/nobody/eef_pose"
    with arm:
        with pytest.raises(StaleStateError, match="no end-effector pose received") as err:
            arm.read_state()
        assert "\n" not in str(err.value)


def test_real_env_over_ros_arm_and_software_camera(fake_arm):
    pytest.importorskip("pyrealsense2")
    from hardware.real_env import RealArmEnv, RealArmEnvConfig
    from hardware.realsense import RealSenseCamera, RealSenseConfig
    from hardware.realsense_sim import SyntheticRealSense, SyntheticRealSenseConfig

    sim = SyntheticRealSense(SyntheticRealSenseConfig(width=64, height=48))
    cam = RealSenseCamera(RealSenseConfig(width=64, height=48, name="agentview", output_size=(24, 32)), device=sim.device)
    arm = RosArm(arm_config(max_state_age_s=0.3, node_name="robo_env_arm")).start()
    env = RealArmEnv(arm, [cam], RealArmEnvConfig(horizon=2, control_hz=20.0))
    try:
        cam.start()
        sim.stream()
        arm.wait_until_ready(timeout_s=15.0)
        obs, info = env.reset()
        expected = {"eef_pos": (3,), "eef_quat": (4,), "gripper_qpos": (2,), "joint_pos": (7,),
                    "agentview_rgb": (24, 32, 3), "agentview_depth": (24, 32, 1)}
        assert {k: v.shape for k, v in obs.items()} == expected
        assert env.observation_space.contains(obs)
        start = obs["eef_pos"].copy()
        obs, reward, terminated, truncated, info = env.step(np.array([0, 0, 1.0, 0, 0, 0, -1.0]))
        target = fake_arm.expect("target")
        np.testing.assert_allclose(target["pos"], start + [0, 0, 0.05], atol=1e-6)
        assert not truncated and info["success"] is False
        *_, truncated, _ = env.step(np.zeros(7))
        assert truncated
    finally:
        sim.stop_stream()
        env.close()
