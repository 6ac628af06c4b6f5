"""Where plans ahead run: a worker thread, or a spawned process that loads the node's policy with the node's loader
(the committed one-step Lift fixture, a real checkpoint) and answers over a pipe."""

import functools
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from hardware.deploy_config import DeployConfig
from hardware.deploy_policy import load_numpy_policy
from hardware.planner import PlannerError, ProcessPlanner, ThreadPlanner

FIXTURE = Path(__file__).parent / "fixtures" / "lift_onestep" / "best"


def _history(policy_spec, rng):
    return {k: rng.normal(size=(1, policy_spec.n_obs, *shape)).astype(dtype)
            for k, (shape, dtype) in policy_spec.obs_keys.items()}


@pytest.fixture(scope="module")
def config():
    return DeployConfig(checkpoint=str(FIXTURE), control_hz=20.0, lowdim_topics=["object_state=/object_state"])


def test_the_process_planner_runs_the_nodes_policy_and_matches_the_thread_planner(config):
    """Same loader, same weights, same seeded noise: the child's chunks are the node's own, call for call."""
    local = load_numpy_policy(config)
    spec = local.policy.spec
    history = _history(spec, np.random.default_rng(0))
    planner = ProcessPlanner(functools.partial(load_numpy_policy, config))
    thread = ThreadPlanner(local)
    try:
        planner.submit(history).result(timeout=60)  # draws from the unseeded stream, then the reseed restarts it
        planner.reseed(10_000, 3)
        thread.reseed(10_000, 3)
        chunks = [planner.submit(history).result(timeout=60) for _ in range(2)]
        reference = [thread.submit(history).result(timeout=60) for _ in range(2)]
        for (chunk, seconds), (expected, _) in zip(chunks, reference):
            assert chunk.shape == expected.shape == (1, spec.horizon, 7) and seconds > 0
            np.testing.assert_allclose(chunk, expected, atol=1e-5)
        assert not np.allclose(chunks[0][0], chunks[1][0])  # the stream moves on: the noise is not reused
    finally:
        planner.close()
        thread.close()


def test_a_policy_the_process_cannot_load_is_refused_in_one_line():
    bad = DeployConfig(checkpoint="/nonexistent/checkpoint", control_hz=20.0)
    with pytest.raises(PlannerError) as err:
        ProcessPlanner(functools.partial(load_numpy_policy, bad))
    message = str(err.value)
    assert "could not load the policy" in message and "/nonexistent/checkpoint" in message and "\n" not in message


def test_a_planner_process_that_dies_fails_the_plan_instead_of_hanging(config):
    planner = ProcessPlanner(functools.partial(load_numpy_policy, config))
    try:
        os.kill(planner.pid, signal.SIGKILL)
        time.sleep(0.5)
        history = _history(load_numpy_policy(config).policy.spec, np.random.default_rng(1))
        future = planner.submit(history)
        deadline = time.monotonic() + 10
        while not future.done() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert future.done()
        with pytest.raises(PlannerError, match="policy process"):
            future.result()
    finally:
        planner.close()


class Echo:
    """Deterministic stand-in policy for the pipe protocol: the chunk's first value is the history's first value."""

    def predict(self, history):
        value = float(history["x"].reshape(-1)[0])
        time.sleep(0.05)
        return np.full((1, 4, 7), value, np.float32)


def _load_echo():
    return Echo()


def test_an_abandoned_plan_never_answers_a_later_one():
    """The runner forgets a plan in flight at a reset; its late reply must not be taken for the next plan's."""
    planner = ProcessPlanner(_load_echo)
    try:
        planner.submit({"x": np.array([1.0])})
        second = planner.submit({"x": np.array([2.0])})
        chunk, _ = second.result(timeout=30)
        assert chunk[0, 0, 0] == 2.0
    finally:
        planner.close()
