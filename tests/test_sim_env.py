"""SimEnv / vector env contract: observation keys, shapes and dtypes, seeding, action validation."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

os.environ.setdefault("MUJOCO_GL", "egl")

from sim import TASKS, EnvConfig, SimEnv, make_vector_env  # noqa: E402

LOW_DIM_KEYS = {"eef_pos", "eef_quat", "gripper_qpos", "joint_pos", "object_state"}
OBJECT_STATE_DIMS = {"Lift": 10, "PickPlaceCan": 14, "NutAssemblySquare": 14}


def _assert_matches_space(env: SimEnv, obs: dict[str, np.ndarray]) -> None:
    assert set(obs) == set(env.observation_space.spaces)
    for key, space in env.observation_space.spaces.items():
        assert obs[key].shape == space.shape, key
        assert obs[key].dtype == space.dtype, key
    assert env.observation_space.contains(obs)


@pytest.fixture(scope="module")
def lift_env():
    env = SimEnv(EnvConfig(task="Lift"))
    yield env
    env.close()


def test_import_is_cheap():
    import subprocess
    import sys

    code = "import sys, sim; print('robosuite' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("task", TASKS)
def test_low_dim_observation_matches_space(task):
    env = SimEnv(EnvConfig(task=task))
    try:
        obs, info = env.reset(seed=0)
        assert set(obs) == LOW_DIM_KEYS
        assert obs["object_state"].shape == (OBJECT_STATE_DIMS[task],)
        assert all(v.dtype == np.float32 for v in obs.values())
        _assert_matches_space(env, obs)
        assert info == {"success": False}
        assert env.action_space.shape == (7,) and env.action_space.dtype == np.float32
        assert env.metadata["render_modes"] == []
        obs, reward, terminated, truncated, info = env.step(np.zeros(7, dtype=np.float32))
        _assert_matches_space(env, obs)
        assert reward == 0.0 and not terminated and not truncated and info["success"] is False
        # The gripper quaternion is unit-norm xyzw, pointing down at home (site z axis ~ world -z).
        assert abs(np.linalg.norm(obs["eef_quat"]) - 1.0) < 1e-4
    finally:
        env.close()


def test_camera_and_depth_observations():
    config = EnvConfig(task="Lift", cameras=("agentview", "robot0_eye_in_hand"), depth=True, image_height=32,
                       image_width=40)
    env = SimEnv(config)
    try:
        obs, _ = env.reset(seed=0)
        expected = LOW_DIM_KEYS | {"agentview_rgb", "agentview_depth", "eye_in_hand_rgb", "eye_in_hand_depth"}
        assert set(obs) == expected
        _assert_matches_space(env, obs)
        assert obs["agentview_rgb"].shape == (32, 40, 3) and obs["agentview_rgb"].dtype == np.uint8
        assert obs["agentview_depth"].shape == (32, 40, 1) and obs["agentview_depth"].dtype == np.uint16
        depth_m = obs["agentview_depth"].astype(np.float64) / 1000.0
        # agentview looks at the table from ~1 m: millimetre depths in a plausible range, not normalised [0,1].
        assert 0.3 < np.median(depth_m) < 3.0
        # Upright image: the top rows show the far wall/background, the bottom rows the table, which is
        # closer to the camera. Flipping the image would invert this.
        assert depth_m[:4].mean() > depth_m[-4:].mean()
        obs, *_ = env.step(np.zeros(7))
        _assert_matches_space(env, obs)
    finally:
        env.close()


def test_seeded_reset_is_reproducible(lift_env):
    first, _ = lift_env.reset(seed=123)
    lift_env.step(lift_env.action_space.sample())
    other, _ = lift_env.reset(seed=7)
    again, _ = lift_env.reset(seed=123)
    for key in first:
        np.testing.assert_array_equal(first[key], again[key], err_msg=key)
    assert not np.allclose(first["object_state"][:3], other["object_state"][:3])


def test_seeded_rollout_is_reproducible(lift_env):
    actions = np.random.default_rng(0).uniform(-1, 1, size=(10, 7)).astype(np.float32)

    def rollout():
        obs, _ = lift_env.reset(seed=5)
        for action in actions:
            obs, *_ = lift_env.step(action)
        return obs

    a, b = rollout(), rollout()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_an_episode_depends_on_its_seed_alone_not_on_the_process_or_worker():
    """The same episode seed is the same scene whichever worker seed built the env and whatever ran before it:
    the cube robosuite sizes at build time is the model seed's, not the worker's."""
    actions = np.random.default_rng(0).uniform(-1, 1, size=(20, 7)).astype(np.float32)
    fresh, used = SimEnv(EnvConfig(task="Lift"), seed=3), SimEnv(EnvConfig(task="Lift"), seed=99)
    try:
        used.reset()
        for action in actions:
            used.step(action)
        a, _ = fresh.reset(seed=42)
        b, _ = used.reset(seed=42)
        for action in actions:
            a, b = fresh.step(action)[0], used.step(action)[0]
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        assert fresh.robot_config()["model_seed"] == 0
    finally:
        fresh.close()
        used.close()


@pytest.mark.parametrize("bad", [np.zeros(6), np.zeros((1, 7)), np.array([0, 0, np.nan, 0, 0, 0, 0])])
def test_bad_action_raises(lift_env, bad):
    lift_env.reset(seed=0)
    with pytest.raises(ValueError, match="action"):
        lift_env.step(bad)


def test_truncation_at_horizon():
    env = SimEnv(EnvConfig(task="Lift", horizon=3))
    try:
        env.reset(seed=0)
        flags = [env.step(np.zeros(7))[3] for _ in range(3)]
        assert flags == [False, False, True]
    finally:
        env.close()


def test_robot_config_is_json(lift_env):
    config = json.loads(json.dumps(lift_env.robot_config()))
    assert config["task"] == "Lift" and config["robot"] == "Panda"
    assert config["controller"]["type"] == "OSC_POSE"
    assert config["controller"]["output_max"] == [0.05, 0.05, 0.05, 0.5, 0.5, 0.5]
    assert config["horizon"] == 200 and config["control_freq"] == 20


def test_invalid_config_rejected():
    with pytest.raises(ValueError, match="task"):
        SimEnv(EnvConfig(task="Stack"))
    with pytest.raises(ValueError, match="camera"):
        SimEnv(EnvConfig(cameras=("frontview",)))


def test_vector_env_two_workers():
    env = make_vector_env(EnvConfig(task="Lift", horizon=4), num_envs=2, seeds=[0, 1])
    try:
        obs, _ = env.reset()
        assert obs["eef_pos"].shape == (2, 3) and obs["object_state"].shape == (2, 10)
        # Different seeds -> different cube placements.
        assert not np.allclose(obs["object_state"][0, :3], obs["object_state"][1, :3])
        for step in range(4):
            obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
            assert reward.shape == (2,) and obs["joint_pos"].shape == (2, 7)
        # SAME_STEP autoreset: the truncating step already returns the next episode's first obs.
        assert truncated.all()
        assert info["_final_obs"].all()
        assert info["final_obs"][0]["eef_pos"].shape == (3,)
    finally:
        env.close()


def _expert_rewards(env: SimEnv, seed: int) -> tuple[list[float], float, bool]:
    """Per-step rewards of one scripted-expert episode, phi of its first state, and whether it succeeded."""
    from sim.experts import ExpertConfig, make_expert

    expert = make_expert(env, ExpertConfig())
    obs, _ = env.reset(seed=seed)
    expert.reset(obs, episode_seed=seed)
    phi0 = env._staged_reward()
    rewards, done, info = [], False, {}
    while not done:
        obs, reward, terminated, truncated, info = env.step(expert.act(obs))
        rewards.append(reward)
        done = terminated or truncated
    return rewards, phi0, bool(info["success"])


@pytest.mark.parametrize("succeeds", [True, False])
def test_potential_reward_telescopes_to_the_sparse_return_minus_the_first_potential(succeeds):
    # Potential shaping keeps the optimal policies because sum_t g^t (r + g phi' - phi) = sparse return + g^T phi(s_T)
    # - phi(s_0), with phi = 0 once the task is done: checked on an expert success and on a truncated failure.
    gamma = 0.97
    env = SimEnv(EnvConfig(task="Lift", reward="potential", potential_gamma=gamma, horizon=150 if succeeds else 12))
    try:
        rewards, phi0, success = _expert_rewards(env, seed=5)
        assert success == succeeds
        discounts = gamma ** np.arange(len(rewards))
        sparse_return = discounts[-1] if success else 0.0
        phi_end = 0.0 if success else env._staged_reward()
        shaped_return = float(np.dot(discounts, rewards))
        assert shaped_return == pytest.approx(sparse_return + gamma ** len(rewards) * phi_end - phi0, abs=1e-9)
        assert phi0 > 0 and any(abs(r) > 1e-4 for r in rewards[:-1])  # a signal before the end, unlike sparse
        if not succeeds:
            assert phi_end > phi0  # the expert's first 12 steps approach the cube: the potential rose
    finally:
        env.close()


def test_unknown_reward_rejected():
    with pytest.raises(ValueError, match="reward"):
        SimEnv(EnvConfig(reward="shaped"))
