"""The policy runner shared by simulated evaluation and the ROS node: history, chunk execution, holds."""

import numpy as np
import pytest

from hardware.runner import Act, Hold, PolicyRunner, RunnerConfig


class EchoChunkPolicy:
    """A chunk policy whose output encodes its input: action[k] = (newest eef_pos x) * 100 + k, and dims 1..2 carry
    the oldest and newest history entries, so tests can see exactly which history and which chunk index ran."""

    def __init__(self, horizon=16):
        self.horizon, self.calls = horizon, 0

    def predict(self, obs):
        self.calls += 1
        x = obs["eef_pos"][:, :, 0]  # (B, n_obs)
        b = x.shape[0]
        chunk = np.zeros((b, self.horizon, 7), np.float32)
        chunk[:, :, 0] = x[:, -1:] * 100 + np.arange(self.horizon)[None]
        chunk[:, :, 1] = x[:, :1]
        chunk[:, :, 2] = x[:, -1:]
        return chunk


SPEC = {"eef_pos": ((3,), "float32")}


def obs(x):
    return {"eef_pos": np.array([x, 0, 0], np.float32)}


def test_history_padding_chunk_execution_and_replanning():
    policy = EchoChunkPolicy()
    runner = PolicyRunner(policy, SPEC, RunnerConfig(n_obs=2, n_action_steps=3))
    first = runner.act(obs(1.0))
    assert isinstance(first, Act)
    # First tick: history [1, 1] (padded with the first observation), execute chunk index n_obs-1 = 1.
    np.testing.assert_allclose(first.action[:3], [101, 1, 1])
    second = runner.act(obs(2.0)).action
    third = runner.act(obs(3.0)).action
    np.testing.assert_allclose([second[0], third[0]], [102, 103])  # same chunk, indices 2 and 3
    assert policy.calls == 1
    fourth = runner.act(obs(4.0)).action  # chunk used up: replan on history [3, 4]
    np.testing.assert_allclose(fourth[:3], [401, 3, 4])
    assert policy.calls == 2
    runner.reset()
    np.testing.assert_allclose(runner.act(obs(9.0)).action[:3], [901, 9, 9])


@pytest.mark.parametrize("bad,reason", [
    ({"eef_pos": np.array([np.nan, 0, 0], np.float32)}, "NaN"),
    ({"eef_pos": np.zeros(4, np.float32)}, "shape"),
    ({"joint_pos": np.zeros(7, np.float32)}, "missing"),
])
def test_bad_observations_hold_without_touching_state(bad, reason):
    policy = EchoChunkPolicy()
    runner = PolicyRunner(policy, SPEC, RunnerConfig())
    result = runner.act(bad)
    assert isinstance(result, Hold) and reason in result.reason and policy.calls == 0
    np.testing.assert_allclose(runner.act(obs(5.0)).action[:3], [501, 5, 5])  # history was not polluted


def test_stale_observation_holds():
    runner = PolicyRunner(EchoChunkPolicy(), SPEC, RunnerConfig(max_obs_age_s=0.1))
    held = runner.act(obs(1.0), now=10.0, stamp=9.5)
    assert isinstance(held, Hold) and "500 ms old" in held.reason
    assert isinstance(runner.act(obs(1.0), now=10.0, stamp=9.95), Act)


def test_batch_runner_matches_single_runners():
    xs = np.array([[1.0, 2.0, 3.0, 4.0, 5.0], [7.0, 6.0, 5.0, 4.0, 3.0]], np.float32)
    batch = PolicyRunner(EchoChunkPolicy(), SPEC, RunnerConfig(n_action_steps=2), batch=2)
    singles = [PolicyRunner(EchoChunkPolicy(), SPEC, RunnerConfig(n_action_steps=2)) for _ in range(2)]
    for t in range(xs.shape[1]):
        together = batch.act_batch({"eef_pos": np.stack([[xs[0, t], 0, 0], [xs[1, t], 0, 0]]).astype(np.float32)})
        for i, single in enumerate(singles):
            np.testing.assert_allclose(together[i], single.act(obs(xs[i, t])).action)


def test_horizon_too_short_is_refused():
    runner = PolicyRunner(EchoChunkPolicy(horizon=4), SPEC, RunnerConfig(n_obs=2, n_action_steps=8))
    with pytest.raises(ValueError, match="too short"):
        runner.act(obs(1.0))
