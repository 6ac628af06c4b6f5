"""RealArmEnv contract checks with an in-process kinematic arm and a numpy camera (no extras needed)."""

from __future__ import annotations

import numpy as np
import pytest

from hardware.arm import ArmInterface, ArmState, integrate_action
from hardware.camera import CameraFrame
from hardware.real_env import RealArmEnv, RealArmEnvConfig


class KinematicArm:
    """A perfectly tracking arm: each command moves the pose to the integrated target."""

    def __init__(self) -> None:
        self.pos = np.array([0.4, 0.0, 0.3])
        self.quat = np.array([1.0, 0.0, 0.0, 0.0])
        self.grip = 0.04
        self.commands: list[np.ndarray] = []

    def read_state(self) -> ArmState:
        return ArmState(0.0, self.pos.astype(np.float32), self.quat.astype(np.float32),
                        np.full(2, self.grip, np.float32), np.zeros(7, np.float32))

    def send_command(self, action: np.ndarray) -> None:
        self.commands.append(np.array(action))
        self.pos, self.quat = integrate_action(self.pos, self.quat, action)
        self.grip = 0.04 * (1.0 - action[6]) / 2.0


class CountingCamera:
    """Frames whose pixels carry a counter, so the test can tell each observation got a fresh frame."""

    name = "wrist"
    image_shape = (8, 10)
    has_depth = True

    def __init__(self) -> None:
        self.n = 0
        self.stopped = False

    def start(self) -> None: ...

    def stop(self) -> None:
        self.stopped = True

    def read(self) -> CameraFrame:
        self.n += 1
        return CameraFrame(float(self.n), np.full((8, 10, 3), self.n, np.uint8), np.full((8, 10, 1), 1000 + self.n, np.uint16))


def make_env(horizon: int = 3) -> tuple[RealArmEnv, KinematicArm, CountingCamera]:
    arm, cam = KinematicArm(), CountingCamera()
    assert isinstance(arm, ArmInterface)
    return RealArmEnv(arm, [cam], RealArmEnvConfig(horizon=horizon, control_hz=0)), arm, cam


def test_reset_step_contract_and_truncation():
    env, arm, cam = make_env(horizon=2)
    obs, info = env.reset(seed=0)
    assert set(obs) == {"eef_pos", "eef_quat", "gripper_qpos", "joint_pos", "wrist_rgb", "wrist_depth"}
    assert env.observation_space.contains(obs)
    assert info["success"] is False
    obs, reward, terminated, truncated, info = env.step(np.array([1, 0, 0, 0, 0, 0, 1], np.float32))
    assert (reward, terminated, truncated) == (0.0, False, False)
    np.testing.assert_allclose(obs["eef_pos"], [0.45, 0.0, 0.3], atol=1e-6)
    assert obs["gripper_qpos"][0] == pytest.approx(0.0)
    assert obs["wrist_rgb"][0, 0, 0] == 2 and obs["wrist_depth"][0, 0, 0] == 1002
    assert env.observation_space.contains(obs)
    *_, truncated, _ = env.step(np.zeros(7))
    assert truncated
    assert env.action_space.shape == (7,)
    cfg = env.robot_config()
    assert cfg["cameras"] == {"wrist": {"shape": [8, 10], "depth": True}} and cfg["output_max_pos"] == 0.05
    env.close()
    assert cam.stopped


@pytest.mark.parametrize("bad,match", [(np.zeros(6), "shape"), (np.full(7, np.nan), "NaN"), (np.zeros((1, 7)), "shape")])
def test_bad_actions_rejected_before_motion(bad, match):
    env, arm, _ = make_env()
    env.reset()
    with pytest.raises(ValueError, match=match) as err:
        env.step(bad)
    assert "\n" not in str(err.value)
    assert arm.commands == []


def test_out_of_range_actions_are_clipped():
    env, arm, _ = make_env()
    env.reset()
    env.step(np.array([5, -5, 0, 0, 0, 0, 0]))
    np.testing.assert_array_equal(arm.commands[0][:2], [1, -1])
