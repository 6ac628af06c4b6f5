"""Scripted experts succeed on seeded episodes (a quick check here; full figures in docs/experts.md)."""

from __future__ import annotations

import numpy as np
import pytest

from sim import TASKS, EnvConfig, ExpertConfig, SimEnv, make_expert
from sim.experts import run_episode


def _success_rate(task: str, seeds: range, config: ExpertConfig) -> float:
    env = SimEnv(EnvConfig(task=task))
    try:
        expert = make_expert(env, config)
        return float(np.mean([run_episode(env, expert, seed)[0] for seed in seeds]))
    finally:
        env.close()


@pytest.mark.parametrize("task", TASKS)
def test_expert_succeeds_on_small_seeded_set(task):
    assert _success_rate(task, range(3), ExpertConfig()) >= 2 / 3


@pytest.mark.parametrize("task", TASKS)
def test_expert_actions_are_valid(task):
    env = SimEnv(EnvConfig(task=task))
    try:
        expert = make_expert(env, ExpertConfig(action_noise_std=0.5, seed=1))
        obs, _ = env.reset(seed=0)
        expert.reset(obs, episode_seed=0)
        for _ in range(20):
            action = expert.act(obs)
            assert action.shape == (7,) and action.dtype == np.float32
            assert np.all(np.abs(action) <= 1.0)
            obs, *_ = env.step(action)
    finally:
        env.close()


def test_noise_knobs_change_actions_reproducibly():
    env = SimEnv(EnvConfig(task="Lift"))
    try:
        def actions(config: ExpertConfig) -> np.ndarray:
            expert = make_expert(env, config)
            obs, _ = env.reset(seed=0)
            expert.reset(obs, episode_seed=0)
            out = []
            for _ in range(15):
                out.append(expert.act(obs))
                obs, *_ = env.step(out[-1])
            return np.stack(out)

        noisy = ExpertConfig(action_noise_std=0.1, waypoint_jitter_m=0.01, hesitation_prob=0.5, seed=3)
        np.testing.assert_array_equal(actions(noisy), actions(noisy))
        assert not np.allclose(actions(noisy), actions(ExpertConfig()))
    finally:
        env.close()


def test_unknown_task_has_no_expert():
    class Fake:
        class config:  # noqa: N801 - mimics EnvConfig's attribute
            task = "Stack"

    with pytest.raises(ValueError, match="Stack"):
        make_expert(Fake(), ExpertConfig())  # type: ignore[arg-type]


@pytest.mark.slow
@pytest.mark.parametrize("task", TASKS)
def test_expert_success_rate_20_episodes(task):
    assert _success_rate(task, range(20), ExpertConfig()) >= 0.9
