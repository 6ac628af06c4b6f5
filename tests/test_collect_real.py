"""`robo collect --robot real`: the real-arm path end to end, with the arm driver in another process talking
real DDS on loopback and the camera played back from a librealsense recording (.db3)."""

import numpy as np
import pytest
import yaml
from pynput.keyboard import KeyCode

from test_collect import KeyScript
from test_hw_ros_arm import DOMAIN_ID, FakeArmProcess  # sets the ROS environment for this process

from robo.collect import CollectConfig, TeleopSource, _make_env, record
from robo.data.schema import DatasetSchema
from robo.data.store import ZarrDataset

pytestmark = pytest.mark.ros


def test_teleop_collection_on_the_real_arm_path(tmp_path):
    from hardware.realsense_sim import record_synthetic
    from hardware.teleop import KeyboardConfig, KeyboardTeleop

    record_synthetic(str(tmp_path / "camera.db3"), 30)
    robot_yaml = tmp_path / "robot.yaml"
    robot_yaml.write_text(yaml.safe_dump({
        "arm": {"domain_id": DOMAIN_ID, **{f"{t}_topic": f"/fake_arm/{name}" for t, name in [
            ("joint_states", "joint_states"), ("eef_pose", "eef_pose"), ("target_pose", "cartesian_target"),
            ("gripper_command", "gripper_command")]}},
        "cameras": [{"name": "agentview", "playback_file": str(tmp_path / "camera.db3"), "output_size": [24, 32]}],
        "env": {"horizon": 100, "control_hz": 20.0},
    }))
    fake = FakeArmProcess(DOMAIN_ID)
    try:
        config = CollectConfig(robot="real", robot_config=robot_yaml, source="keyboard", episodes=1, progress=False)
        env = _make_env(config)
        forward, enter, save = KeyCode.from_char("w"), KeyCode.from_char("\r"), KeyCode.from_char("y")
        script = {0: [("press", enter)], 1: [("release", enter), ("press", forward)], 5: [("release", forward)],
                  7: [("press", save)]}
        schema = DatasetSchema.from_spaces(env.observation_space, env.action_space, fps=20.0, task="Lift",
                                           robot_config=env.robot_config())
        with ZarrDataset.create(tmp_path / "real.zarr", schema) as ds:
            stats = record(env, TeleopSource(KeyScript(KeyboardTeleop(KeyboardConfig(listen=False)), script)), ds, config)
        env.close()
    finally:
        fake.close()
    assert stats.saved == 1
    ds = ZarrDataset.open(tmp_path / "real.zarr")
    ep = ds.episode(0)
    assert ep["agentview_rgb"].shape == (7, 24, 32, 3) and ep["agentview_depth"].shape == (7, 24, 32, 1)
    assert ep["agentview_depth"].max() > 0  # real depth values came through
    assert (ep["action"][1:5, 0] > 0).all()
    # The driver in the other process tracked the published targets: the measured pose moved forward.
    assert ep["eef_pos"][-1, 0] > ep["eef_pos"][0, 0] + 0.01
    assert np.all(np.diff(ep["timestamp"]) > 0.02)  # wall-clock stamps at the 20 Hz pace
    assert ds.episodes[0].source == "teleop" and ds.schema.robot_config["cameras"]["agentview"]["depth"]
