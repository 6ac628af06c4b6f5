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


def test_per_stream_staleness_names_the_stream():
    runner = PolicyRunner(EchoChunkPolicy(), SPEC, RunnerConfig(max_obs_age_s=0.2, stream_max_age_s={"camera": 0.05}))
    held = runner.act(obs(1.0), now=10.0, stamp={"eef_pos": 9.9, "camera": 9.9})
    assert isinstance(held, Hold) and "stream 'camera' is 100 ms old (limit 50 ms)" in held.reason
    assert isinstance(runner.act(obs(1.0), now=10.0, stamp={"eef_pos": 9.9, "camera": 9.97}), Act)
    future = runner.act(obs(1.0), now=10.0, stamp={"eef_pos": 11.0, "camera": 9.99})
    assert isinstance(future, Hold) and "future" in future.reason


def test_clocked_scheduling_drops_actions_whose_time_has_passed():
    policy = EchoChunkPolicy()
    runner = PolicyRunner(policy, SPEC, RunnerConfig(n_obs=2, n_action_steps=6, control_dt=0.1))
    assert runner.act(obs(1.0), now=0.0, stamp=0.0).action[0] == 101  # chunk index 1 = executed action 0
    assert runner.act(obs(1.0), now=0.1, stamp=0.1).action[0] == 102  # on time: next action
    # A late tick at t = 0.35: actions for 0.2 and 0.3 are past; the one for 0.3 (executed index 3) is current.
    assert runner.act(obs(1.0), now=0.35, stamp=0.35).action[0] == 104
    assert runner.dropped_actions == 1 and policy.calls == 1
    # Past the planned chunk: replan from the newest observation, starting at its own first action.
    late = runner.act(obs(7.0), now=0.9, stamp=0.9).action
    assert late[0] == 701 and policy.calls == 2


def test_safety_filter_bounds_runner_output_per_env():
    from hardware.safety import SafetyLimits

    class Wild:  # a broken policy that asks for 10x the allowed step and opens/closes at random
        def predict(self, o):
            b = o["eef_pos"].shape[0]
            return np.tile(np.array([10.0, -10, 10, 3, -3, 3, 0.05], np.float32), (b, 16, 1))

    limits = SafetyLimits(workspace_low=(-1, -1, 0), workspace_high=(1, 1, 0.52))
    spec = {"eef_pos": ((3,), "float32"), "eef_quat": ((4,), "float32")}
    runner = PolicyRunner(Wild(), spec, RunnerConfig(), batch=2, safety=limits)
    batch_obs = {"eef_pos": np.array([[0.3, 0, 0.5], [0.3, 0, 0.2]], np.float32),
                 "eef_quat": np.array([[1, 0, 0, 0], [1, 0, 0, 0]], np.float32)}
    actions = runner.act_batch(batch_obs)
    assert np.all(np.abs(actions[:, :6]) <= 1.0)
    # Env 0 is 2 cm under the ceiling: its +z step is cut to 0.4 of a unit action; env 1 has room.
    np.testing.assert_allclose(actions[:, 2], [0.4, 1.0], atol=1e-6)
    assert "workspace" in runner.last_commands[0].interventions and "workspace" not in runner.last_commands[1].interventions
    runner.disarm()
    assert isinstance(runner.act_batch(batch_obs), Hold)


# ---------------------------------------------------------------------------------------------- plan ahead
class SlowEcho(EchoChunkPolicy):
    def __init__(self, seconds):
        super().__init__()
        self.seconds = seconds

    def predict(self, obs):
        import time

        time.sleep(self.seconds)
        return super().predict(obs)


def test_plan_ahead_in_lockstep_plans_from_the_last_actions_tick_and_starts_at_action_1():
    policy = EchoChunkPolicy()
    runner = PolicyRunner(policy, SPEC, RunnerConfig(n_obs=2, n_action_steps=4, plan_ahead=True))
    got = [runner.act(obs(float(x))).action[0] for x in (1, 2, 3, 4, 5, 6)]
    # Chunk 1 from x=1 (executed indices 0..3 = chunk 1..4); the 4th call also plans from x=4; the 5th call
    # starts that chunk at executed index 1 (chunk index 2).
    assert got == [101, 102, 103, 104, 402, 403]
    assert policy.calls == 2
    # Without plan_ahead the second chunk comes from x=5, planned in the 5th call.
    plain = PolicyRunner(EchoChunkPolicy(), SPEC, RunnerConfig(n_obs=2, n_action_steps=4))
    assert [plain.act(obs(float(x))).action[0] for x in (1, 2, 3, 4, 5, 6)] == [101, 102, 103, 104, 501, 502]


def test_plan_ahead_with_a_clock_keeps_the_policy_off_the_control_tick():
    import time

    policy = SlowEcho(0.15)
    runner = PolicyRunner(policy, SPEC, RunnerConfig(n_obs=2, n_action_steps=3, control_dt=0.1, plan_ahead=True))
    try:
        assert runner.act(obs(1.0), now=0.0, stamp=0.0).action[0] == 101  # the first chunk is planned in the tick
        assert runner.act(obs(2.0), now=0.1, stamp=0.1).action[0] == 102
        start = time.perf_counter()
        assert runner.act(obs(3.0), now=0.2, stamp=0.2).action[0] == 103  # last action; planning starts (from x=3)
        assert time.perf_counter() - start < 0.1, "the tick waited for the policy"
        time.sleep(0.2)  # the plan finishes meanwhile
        start = time.perf_counter()
        assert runner.act(obs(4.0), now=0.3, stamp=0.3).action[0] == 302  # its action for t=0.3 is executed index 1
        assert time.perf_counter() - start < 0.1 and runner.late_plans == 0 and runner.dropped_actions == 0
        # Same schedule as the lockstep emulation that robo eval --plan-ahead runs.
        lockstep = PolicyRunner(EchoChunkPolicy(), SPEC, RunnerConfig(n_obs=2, n_action_steps=3, plan_ahead=True))
        assert [lockstep.act(obs(float(x))).action[0] for x in (1, 2, 3, 4)] == [101, 102, 103, 302]
        # A plan slower than the period: the tick holds instead of waiting; when it arrives, the action for now runs.
        runner.act(obs(5.0), now=0.4, stamp=0.4)  # executed index 2, the last: plans from x=5
        start = time.perf_counter()
        held = runner.act(obs(6.0), now=0.5, stamp=0.5)
        assert isinstance(held, Hold) and "still being planned" in held.reason and runner.late_plans == 1
        assert time.perf_counter() - start < 0.1, "the tick waited for the policy"
        time.sleep(0.25)
        assert runner.act(obs(7.0), now=0.6, stamp=0.6).action[0] == 503  # executed index 2 belongs to t=0.6
        assert runner.dropped_actions == 1
    finally:
        runner.close()


def test_plan_ahead_is_forgotten_on_reset_and_refused_for_single_action_chunks():
    policy = EchoChunkPolicy()
    runner = PolicyRunner(policy, SPEC, RunnerConfig(n_obs=2, n_action_steps=2, plan_ahead=True))
    runner.act(obs(1.0))
    runner.act(obs(2.0))  # plans ahead from x=2
    runner.reset()
    assert runner.act(obs(9.0)).action[0] == 901  # a fresh plan from the new episode, not the stale one
    with pytest.raises(ValueError, match="at least 2"):
        PolicyRunner(policy, SPEC, RunnerConfig(n_obs=2, n_action_steps=1, plan_ahead=True))


def test_with_a_clock_the_filter_ages_the_observation_when_the_command_leaves():
    from hardware.safety import SafetyLimits

    policy = SlowEcho(0.3)
    clock = [0.0]
    limits = SafetyLimits(max_obs_age_s=0.2, workspace_low=(-9, -9, -9), workspace_high=(9, 9, 9))
    runner = PolicyRunner(policy, {**SPEC, "eef_quat": ((4,), "float32")}, RunnerConfig(n_obs=2, n_action_steps=4,
                          control_dt=0.1, max_obs_age_s=0.2), safety=limits, kinematics=None, clock=lambda: clock[0])
    observation = {"eef_pos": np.zeros(3, np.float32), "eef_quat": np.array([0, 0, 0, 1], np.float32)}
    clock[0] = 0.35  # the policy call in this tick took 0.35 s: the observation from t=0 is too old to act on
    held = runner.act(observation, now=0.0, stamp=0.0)
    assert isinstance(held, Hold) and "old" in held.reason
    clock[0] = 0.45  # the next tick, on time, acts
    assert isinstance(runner.act(observation, now=0.4, stamp=0.4), Act)


class FailingPlanner:
    """A planner whose plans fail from the ``good``-th on (as a dead planner process's do): real Futures carrying
    the error; the good ones echo, as :class:`EchoChunkPolicy` does."""

    def __init__(self, good: int = 1):
        self.submitted, self.good, self.echo = 0, good, EchoChunkPolicy()

    def submit(self, history):
        from concurrent.futures import Future

        self.submitted += 1
        future = Future()
        if self.submitted <= self.good:
            future.set_result((self.echo.predict(history), 0.0))
        else:
            future.set_exception(RuntimeError("the policy process exited (code -9); restart the node"))
        return future

    def reseed(self, *entropy):
        pass

    def close(self):
        pass


def test_a_failed_plan_holds_says_why_and_keeps_holding_until_a_reset():
    planner = FailingPlanner(good=1)
    runner = PolicyRunner(EchoChunkPolicy(), SPEC, RunnerConfig(n_obs=2, n_action_steps=2, control_dt=0.1,
                                                                plan_ahead=True), planner=planner)
    assert runner.act(obs(1.0), now=0.0, stamp=0.0).action[0] == 101  # first chunk: on the planner, waited for
    assert runner.act(obs(2.0), now=0.1, stamp=0.1).action[0] == 102  # last action: the plan goes to the planner
    for t in (0.2, 0.3, 0.4):
        held = runner.act(obs(3.0), now=t, stamp=t)
        assert isinstance(held, Hold) and held.reason == "planning failed: the policy process exited (code -9); " \
                                                         "restart the node"
    assert runner.plan_failures == 1 and planner.submitted == 2  # not retried behind the operator's back
    planner.good = 3
    runner.reset()  # re-arming starts over
    assert runner.act(obs(5.0), now=0.5, stamp=0.5).action[0] == 501
    # A first plan of an episode that fails holds the same way (it runs on the planner too).
    runner.reset()
    held = runner.act(obs(6.0), now=0.6, stamp=0.6)
    assert isinstance(held, Hold) and held.reason.startswith("planning failed") and runner.plan_failures == 2


class NoisyEcho(EchoChunkPolicy):
    """Echo plus a draw from its own seeded generator, so the noise stream's order is visible in the actions."""

    def __init__(self):
        super().__init__()
        self.rng = np.random.default_rng(0)

    def reseed(self, *entropy):
        self.rng = np.random.default_rng(list(entropy))

    def predict(self, obs):
        return super().predict(obs) + self.rng.integers(0, 10_000)


def test_reseeding_restarts_the_noise_in_plan_order_on_every_path():
    """The node reseeds at each arming as robo eval does per episode: the clocked runner (every call on its planner)
    and the lockstep emulation draw the same noise sequence, hence the same actions."""
    def actions(runner, clocked):
        out = []
        for episode in (0, 1, 0):
            runner.reset()
            runner.reseed(7, episode)
            for i, x in enumerate((1, 2, 3, 4, 5)):
                t = episode + 0.1 * i
                act = runner.act(obs(float(x)), now=t, stamp=t) if clocked else runner.act(obs(float(x)))
                out.append(float(act.action[0]))
                runner.start_planning()
                if clocked:
                    runner._pending and runner._pending[0].result()  # the plan ahead lands before the next tick
        return out

    config = dict(n_obs=2, n_action_steps=2, plan_ahead=True)
    lockstep = actions(PolicyRunner(NoisyEcho(), SPEC, RunnerConfig(**config)), clocked=False)
    clocked_runner = PolicyRunner(NoisyEcho(), SPEC, RunnerConfig(**config, control_dt=0.1, defer_plan_start=True))
    try:
        assert actions(clocked_runner, clocked=True) == lockstep
    finally:
        clocked_runner.close()
    assert lockstep[:5] == lockstep[10:] != lockstep[5:10]  # the same seed restarts the same stream
    unseeded = PolicyRunner(NoisyEcho(), SPEC, RunnerConfig(**config))
    unseeded.act(obs(1.0))
    unseeded.reseed(8, 0)
    unseeded.reset()
    assert float(unseeded.act(obs(1.0)).action[0]) != lockstep[0]  # another seed, other noise


def test_a_deferred_plan_starts_only_when_the_caller_says_the_tick_is_done():
    import time

    policy = SlowEcho(0.05)
    runner = PolicyRunner(policy, SPEC, RunnerConfig(n_obs=2, n_action_steps=2, control_dt=0.1, plan_ahead=True,
                                                     defer_plan_start=True))
    try:
        runner.act(obs(1.0), now=0.0, stamp=0.0)
        runner.act(obs(2.0), now=0.1, stamp=0.1)  # the plan from x=2 is due, not started
        time.sleep(0.1)
        assert policy.calls == 1
        runner.start_planning()
        time.sleep(0.15)
        assert policy.calls == 2
        assert runner.act(obs(3.0), now=0.2, stamp=0.2).action[0] == 202  # planned from x=2, at its action 1
        # A caller that never calls start_planning still gets its plan started by the next tick (late: it holds).
        runner.act(obs(4.0), now=0.3, stamp=0.3)
        held = runner.act(obs(5.0), now=0.4, stamp=0.4)
        assert isinstance(held, Hold) and "still being planned" in held.reason
    finally:
        runner.close()


def test_observations_stamped_after_the_tick_began_never_replay_an_action():
    """A tick reads messages that arrived after it began; the chunk's clock is anchored no later than the tick, so
    its first action is the one for now (not index -1, the chunk's last), and a planned-ahead chunk starts at its
    action 1 even when the next tick fires a little early, as robo eval's lockstep schedule does."""
    runner = PolicyRunner(EchoChunkPolicy(), SPEC, RunnerConfig(n_obs=2, n_action_steps=4, control_dt=0.1))
    assert runner.act(obs(1.0), now=0.0, stamp=0.0004).action[0] == 101
    assert runner.dropped_actions == 0
    ahead = PolicyRunner(EchoChunkPolicy(), SPEC, RunnerConfig(n_obs=2, n_action_steps=2, control_dt=0.1,
                                                               plan_ahead=True))
    try:
        got = []
        for i, x in enumerate((1.0, 2.0, 3.0, 4.0)):
            now = 0.1 * i - (0.0003 if i == 2 else 0.0)  # the third tick fires 0.3 ms early
            got.append(float(ahead.act(obs(x), now=now, stamp=now + 0.0002).action[0]))
            if ahead._pending is not None:
                ahead._pending[0].result()
        assert got == [101, 102, 202, 302] and ahead.dropped_actions == 0
    finally:
        ahead.close()
