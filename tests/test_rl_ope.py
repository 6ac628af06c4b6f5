"""AM-Q and FQE rank a better policy above a worse one on the toy task, with common random numbers."""

from __future__ import annotations

import pytest
import torch

from robo.rl.critic import IQLConfig, IQLCritic
from robo.rl.dynamics import DynamicsConfig, DynamicsEnsemble
from robo.rl.ope import AMQ, FQE, AMQConfig, FQEConfig
from robo.rl.toy import PushPolicy, behaviour_data, true_success

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def toy():
    data = behaviour_data(episodes=60)
    critic = IQLCritic(1, 4, IQLConfig(hidden=(64, 64), steps=800, lr=1e-3, polyak=0.02, progress=False))
    critic.fit(data.chunks)
    dyn = DynamicsEnsemble(1, 1, DynamicsConfig(members=3, elites=2, hidden=(32, 32), steps=500, lr=3e-3,
                                                progress=False))
    dyn.fit(data.steps)
    return data, critic, dyn


def test_toy_truth_is_ordered():
    assert true_success(PushPolicy(0.8), 50) > 0.9 > 0.1 > true_success(PushPolicy(-0.3), 50)


def test_amq_and_fqe_rank_the_better_policy_first(toy):
    data, critic, dyn = toy
    good, poor, bad = PushPolicy(0.8, 0.1), PushPolicy(0.15, 0.1), PushPolicy(-0.3, 0.1)
    amq = AMQ(data, critic, dyn, AMQConfig(horizon=8, starts=64), chunk=4)
    fqe = FQE(data, FQEConfig(hidden=(64, 64), steps=600, lr=1e-3, polyak=0.02, starts=32), chunk=4)
    for est in (amq, fqe):
        v = [est.estimate(p, seed=3) for p in (good, poor, bad)]
        assert v[0].value > v[1].value > v[2].value, (est.name, [r.value for r in v])
        assert all(r.spread >= 0 for r in v)
    # common random numbers: the same seed gives the same estimate, bit for bit
    assert amq.estimate(good, seed=3).value == amq.estimate(good, seed=3).value


def test_policy_with_another_chunk_is_refused(toy):
    data, critic, dyn = toy
    amq = AMQ(data, critic, dyn, AMQConfig(horizon=2, starts=4), chunk=4)
    from dataclasses import replace
    p = PushPolicy(0.5)
    p.spec = replace(p.spec, n_action_steps=2)
    with pytest.raises(ValueError, match="actions per chunk"):
        amq.estimate(p)


def test_bench_metrics():
    import numpy as np

    from robo.bench.ope import gate_accuracy, regret_at_1, spearman

    truth = np.array([0.1, 0.5, 0.9, 0.3])
    assert spearman(truth * 2 + 1, truth) == pytest.approx(1.0)
    assert spearman(-truth, truth) == pytest.approx(-1.0)
    assert spearman(np.array([1.0, 1.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0, 4.0])) == pytest.approx(0.9486833)
    assert regret_at_1(np.array([0.0, 1.0, 0.5, 0.2]), truth) == pytest.approx(0.4)  # ranks the 0.5 policy first
    acc, pairs = gate_accuracy(truth.copy(), truth, delta=0.0, margin=0.05)
    assert acc == 1.0 and pairs == 12
    acc, _ = gate_accuracy(-truth, truth, delta=0.0, margin=0.05)
    assert acc == 0.0


def test_bench_reuses_a_true_success_only_for_the_same_policy_and_protocol(tmp_path, monkeypatch):
    """The bench's simulation is its cost: a matching record is reused, anything else is simulated again."""
    import robo.evaluate
    from robo.bench.ope import NoisyPolicy, OPEBenchConfig, true_success

    simulated = []

    def fake_evaluate(policy, config):  # stands in for the simulator: counts calls, returns a known rate
        simulated.append(config.episodes)
        return {"success_rate": 0.25}

    monkeypatch.setattr(robo.evaluate, "evaluate_policy", fake_evaluate)
    policy = NoisyPolicy(PushPolicy(0.5), 0.3, "push+noise0.3")
    cfg = OPEBenchConfig(episodes=4, progress=False, output_dir=tmp_path)
    assert true_success(policy, "abc", "Toy", cfg) == 0.25 and simulated == [4]
    assert true_success(policy, "abc", "Toy", cfg) == 0.25 and simulated == [4]  # reused
    assert true_success(policy, "retrained", "Toy", cfg) == 0.25 and simulated == [4, 4]  # other weights
    assert true_success(NoisyPolicy(policy.base, 0.1, "push+noise0.1"), "abc", "Toy", cfg) == 0.25
    assert simulated == [4, 4, 4]  # other noise
    more = OPEBenchConfig(episodes=8, progress=False, output_dir=tmp_path)
    assert true_success(policy, "abc", "Toy", more) == 0.25 and simulated == [4, 4, 4, 8]  # other protocol


def test_bench_checkpoint_entries_may_carry_their_own_noise_levels():
    from pathlib import Path

    from robo.bench.ope import parse_checkpoint_entry

    assert parse_checkpoint_entry("runs/a/best", (0.0, 0.3)) == (Path("runs/a/best"), (0.0, 0.3))
    assert parse_checkpoint_entry("runs/a/best@0,0.1,0.2", (0.0, 0.3)) == (Path("runs/a/best"), (0.0, 0.1, 0.2))
    for bad in ("runs/a/best@", "runs/a/best@x", "runs/a/best@-0.1"):
        with pytest.raises(ValueError, match="PATH@N1,N2|noise levels >= 0"):
            parse_checkpoint_entry(bad, (0.0,))
