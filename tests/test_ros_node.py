"""The ROS 2 policy node without DDS: message conversion, parameter files and refusals, checkpoints the robot
cannot feed. The node over real DDS is tests/test_ros_dds.py."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hardware.deploy_config import DeployConfigError, load_deploy_config
from hardware.ros_convert import MessageError, image_to_numpy, joint_positions, numpy_to_image, pose_to_arrays
from robo.bench.node import LOWDIM, REPO, fresh_checkpoint


def image_msg(array, encoding, step=None, bigendian=False):
    height, width = array.shape[:2]
    row = array.reshape(height, -1).view(np.uint8)
    step = step or row.shape[1]
    data = np.zeros((height, step), np.uint8)
    data[:, :row.shape[1]] = row
    return SimpleNamespace(encoding=encoding, height=height, width=width, step=step, is_bigendian=bigendian,
                           data=data.tobytes())


# ---------------------------------------------------------------------------------------------- conversion
def test_images_are_read_through_the_row_step():
    rgb = np.random.default_rng(0).integers(0, 255, (5, 7, 3), dtype=np.uint8)
    np.testing.assert_array_equal(image_to_numpy(image_msg(rgb, "rgb8", step=7 * 3 + 11)), rgb)  # padded rows
    np.testing.assert_array_equal(image_to_numpy(image_msg(rgb[:, :, ::-1].copy(), "bgr8")), rgb)
    depth = np.arange(35, dtype=np.uint16).reshape(5, 7) * 300
    got = image_to_numpy(image_msg(depth, "16UC1", step=7 * 2 + 2))
    assert got.shape == (5, 7, 1) and got.dtype == np.uint16
    np.testing.assert_array_equal(got[:, :, 0], depth)
    big = image_msg(depth.astype(">u2"), "16UC1", bigendian=True)
    np.testing.assert_array_equal(image_to_numpy(big)[:, :, 0], depth)
    metres = image_to_numpy(image_msg(np.array([[0.5, np.nan]], np.float32), "32FC1"))
    np.testing.assert_array_equal(metres[:, :, 0], [[500, 0]])


def test_round_trip_through_a_real_image_message():
    from sensor_msgs.msg import Image

    rgb = np.random.default_rng(1).integers(0, 255, (8, 6, 3), dtype=np.uint8)
    np.testing.assert_array_equal(image_to_numpy(numpy_to_image(rgb, Image())), rgb)
    depth = np.random.default_rng(2).integers(0, 4000, (8, 6, 1)).astype(np.uint16)
    np.testing.assert_array_equal(image_to_numpy(numpy_to_image(depth, Image())), depth)


@pytest.mark.parametrize("msg,why", [
    (SimpleNamespace(encoding="yuv422", height=1, width=1, step=2, is_bigendian=False, data=b"00"), "not supported"),
    (SimpleNamespace(encoding="rgb8", height=2, width=4, step=8, is_bigendian=False, data=bytes(24)), "step 8"),
    (SimpleNamespace(encoding="rgb8", height=2, width=4, step=12, is_bigendian=False, data=bytes(20)), "20 bytes"),
    (SimpleNamespace(encoding="mono8", height=0, width=4, step=4, is_bigendian=False, data=b""), "4x0")])
def test_malformed_images_are_refused_in_one_line(msg, why):
    with pytest.raises(MessageError, match=why):
        image_to_numpy(msg)


def test_joint_states_and_poses_are_validated():
    names = ["a", "b", "c"]
    assert joint_positions(SimpleNamespace(name=["c", "a", "b"], position=[3.0, 1.0, 2.0]), names).tolist() == [1, 2, 3]
    with pytest.raises(MessageError, match=r"lacks joints \['c'\]"):
        joint_positions(SimpleNamespace(name=["a", "b"], position=[1.0, 2.0]), names)
    with pytest.raises(MessageError, match="NaN"):
        joint_positions(SimpleNamespace(name=names, position=[1.0, np.nan, 2.0]), names)
    with pytest.raises(MessageError, match="3 names but 2"):
        joint_positions(SimpleNamespace(name=names, position=[1.0, 2.0]), names)

    def pose(x, q):
        return SimpleNamespace(pose=SimpleNamespace(position=SimpleNamespace(x=x, y=0.0, z=0.0),
                                                    orientation=SimpleNamespace(x=q[0], y=q[1], z=q[2], w=q[3])))

    pos, quat = pose_to_arrays(pose(0.5, (0, 0, 0, 1.0)))
    assert pos[0] == 0.5 and quat[3] == 1.0
    with pytest.raises(MessageError, match="unit quaternion"):
        pose_to_arrays(pose(0.5, (0, 0, 0, 3.0)))
    with pytest.raises(MessageError, match="NaN"):
        pose_to_arrays(pose(np.nan, (0, 0, 0, 1.0)))


# ---------------------------------------------------------------------------------------------- parameters
@pytest.mark.parametrize("robot,output", [("fr3", "pose"), ("panda", "pose"), ("ur5e", "joint_trajectory"),
                                          ("sim_panda", "pose")])
def test_every_robot_parameter_file_loads(robot, output):
    config = load_deploy_config(REPO / "hardware" / "robots" / f"{robot}_deploy.yaml")
    assert config.output == output and len(config.joint_names) == len(config.safety.joint_max_vel)


def test_parameter_typos_and_contradictions_are_refused(tmp_path):
    bad = tmp_path / "robot.yaml"
    bad.write_text("/**:\n  ros__parameters:\n    control_rate: 20.0\n")
    with pytest.raises(DeployConfigError, match=r"unknown parameters \['control_rate'\]"):
        load_deploy_config(bad)
    bad.write_text("/**:\n  ros__parameters:\n    safety: {workspace_lo: [0, 0, 0]}\n")
    with pytest.raises(DeployConfigError, match=r"safety.workspace_lo"):
        load_deploy_config(bad)
    bad.write_text("/**:\n  ros__parameters:\n    control_hz: 100.0\n")
    with pytest.raises(DeployConfigError, match="safety.control_dt 0.05 s does not match control_hz 100"):
        load_deploy_config(bad)
    bad.write_text("/**:\n  ros__parameters:\n    output: joint_trajectory\n    kinematics: none\n")
    with pytest.raises(DeployConfigError, match="needs a kinematic model"):
        load_deploy_config(bad)
    bad.write_text("/**:\n  ros__parameters:\n    image_topics: ['agentview_rgb:/camera']\n")
    with pytest.raises(DeployConfigError, match="observation_key=/topic"):
        load_deploy_config(bad)
    bad.write_text("/**:\n  ros__parameters:\n    torch_threads: -1\n")
    with pytest.raises(DeployConfigError, match="torch_threads must be 0"):
        load_deploy_config(bad)


def test_a_checkpoint_the_robot_cannot_feed_is_refused_in_one_line(tmp_path):
    from hardware.ros_node import load_policy
    from policies.spec import CheckpointMismatch

    ckpt = fresh_checkpoint(tmp_path / "ckpt", LOWDIM)
    fr3 = load_deploy_config(REPO / "hardware" / "robots" / "fr3_deploy.yaml", {"checkpoint": str(ckpt)})
    with pytest.raises(CheckpointMismatch, match=r"needs observation keys \['object_state'\]") as err:
        load_policy(fr3)
    assert "\n" not in str(err.value)
    sim = load_deploy_config(REPO / "hardware" / "robots" / "sim_panda_deploy.yaml", {"checkpoint": str(ckpt)})
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        policy, spec, _ = load_policy(sim)
        # Node and planner process run the policy on the configured intra-op threads (default 1), not torch's.
        assert sim.torch_threads == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    assert set(spec.obs_keys) == set(LOWDIM)
