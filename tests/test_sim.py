"""The simulated tasks behind one env interface, vector envs, and the scripted experts."""

import numpy as np
import pytest

from sim.env import TASKS, EnvConfig, SimEnv
from sim.experts import ExpertConfig, make_expert


def run_expert(env, seed, config=ExpertConfig()):
    obs, _ = env.reset(seed=seed)
    expert = make_expert(env, ExpertConfig(**{**config.__dict__, "seed": seed}))
    expert.reset(obs)
    while True:
        obs, _, terminated, truncated, info = env.step(expert.act(obs))
        if terminated or truncated:
            return info["success"]


@pytest.fixture(scope="module")
def lift():
    env = SimEnv(EnvConfig(task="Lift"))
    yield env
    env.close()


def test_lowdim_keys_shapes_and_dtypes_match_the_space(lift):
    obs, info = lift.reset(seed=0)
    assert set(obs) == {"eef_pos", "eef_quat", "gripper_qpos", "joint_pos", "object_state"}
    assert lift.observation_space.contains(obs) and info == {"success": False}
    assert obs["eef_quat"].shape == (4,) and abs(np.linalg.norm(obs["eef_quat"]) - 1) < 1e-4
    obs, reward, terminated, truncated, info = lift.step(np.zeros(7, np.float32))
    assert lift.observation_space.contains(obs) and reward == 0.0 and not terminated and not truncated


def test_camera_and_depth_observations():
    env = SimEnv(EnvConfig(task="Lift", cameras=("agentview", "robot0_eye_in_hand"), image_height=32, image_width=40,
                           depth=True))
    try:
        obs, _ = env.reset(seed=0)
        assert obs["agentview_rgb"].shape == (32, 40, 3) and obs["agentview_rgb"].dtype == np.uint8
        assert obs["eye_in_hand_depth"].shape == (32, 40, 1) and obs["eye_in_hand_depth"].dtype == np.uint16
        assert env.observation_space.contains(obs)
        depth_m = obs["agentview_depth"].astype(float) / 1000
        assert 0.3 < np.median(depth_m) < 3.0  # a table a metre or so from the camera, in millimetres
        # Upright: the table (bottom rows) is nearer to the agentview camera than the far background (top rows).
        assert depth_m[-4:].mean() < depth_m[:4].mean()
        assert obs["agentview_rgb"].std() > 5  # a real picture, not a blank frame
    finally:
        env.close()


def test_seeded_reset_is_reproducible_and_seeds_differ(lift):
    a = lift.reset(seed=3)[0]["object_state"].copy()
    b = lift.reset(seed=4)[0]["object_state"].copy()
    c = lift.reset(seed=3)[0]["object_state"].copy()
    np.testing.assert_allclose(a, c)
    assert not np.allclose(a, b)


@pytest.mark.parametrize("action,match", [(np.zeros(6), "shape"), (np.full(7, np.nan), "NaN")])
def test_bad_actions_are_refused(lift, action, match):
    lift.reset(seed=0)
    with pytest.raises(ValueError, match=match):
        lift.step(action)


def test_unknown_task_or_camera_is_refused():
    with pytest.raises(ValueError, match="unknown task"):
        SimEnv(EnvConfig(task="Stack"))
    with pytest.raises(ValueError, match="unknown camera"):
        SimEnv(EnvConfig(cameras=("frontview_typo",)))


def test_vector_env_steps_two_workers():
    from sim.vector import make_vector_env

    venv = make_vector_env(EnvConfig(task="Lift"), 2)
    try:
        obs, _ = venv.reset(seed=[0, 1])
        assert obs["eef_pos"].shape == (2, 3) and not np.allclose(obs["object_state"][0], obs["object_state"][1])
        actions = np.zeros((2, 7), np.float32)
        actions[0, 2] = 1.0  # only env 0 moves up
        for _ in range(5):
            obs2, _, terminated, truncated, info = venv.step(actions)
        assert obs2["eef_pos"][0, 2] > obs["eef_pos"][0, 2] + 0.05
        assert abs(obs2["eef_pos"][1, 2] - obs["eef_pos"][1, 2]) < 0.02
        assert info["success"].shape == (2,)
    finally:
        venv.close()


@pytest.mark.parametrize("task", TASKS)
def test_expert_succeeds_on_a_few_seeds(task):
    env = SimEnv(EnvConfig(task=task))
    try:
        seeds = [0, 1] if task == "NutAssemblySquare" else [0, 1, 2]
        assert sum(run_expert(env, s) for s in seeds) >= len(seeds) - (1 if task == "NutAssemblySquare" else 0)
    finally:
        env.close()


def test_noise_knobs_change_the_data_but_lift_still_succeeds(lift):
    clean = []
    obs, _ = lift.reset(seed=0)
    expert = make_expert(lift, ExpertConfig())
    expert.reset(obs)
    clean = expert.act(obs)
    obs, _ = lift.reset(seed=0)
    noisy_expert = make_expert(lift, ExpertConfig(action_noise_std=0.2, waypoint_jitter_m=0.01, hesitation_prob=0.0, seed=1))
    noisy_expert.reset(obs)
    assert not np.allclose(noisy_expert.act(obs), clean)
    knobs = ExpertConfig(action_noise_std=0.1, waypoint_jitter_m=0.005, hesitation_prob=0.2)
    assert sum(run_expert(lift, s, knobs) for s in range(3)) >= 2


@pytest.mark.slow
@pytest.mark.parametrize("task", TASKS)
def test_expert_success_rate_over_20_seeds(task):
    env = SimEnv(EnvConfig(task=task))
    try:
        rate = np.mean([run_expert(env, s) for s in range(20)])
    finally:
        env.close()
    assert rate >= (0.7 if task == "NutAssemblySquare" else 0.95)
