"""The gate: a rejected update leaves the weights (and optimiser state) bit-identical to the accepted ones;
an accepted one moves the anchor; every decision is logged; the ungated mode accepts and still records."""

from __future__ import annotations

import json

import torch

from robo.rl.gate import Gate, GateConfig
from robo.rl.ope import OPEResult
from robo.rl.offline import OfflinePPO, OfflinePPOConfig
from robo.rl.toy import tiny_obs as obs_batch, tiny_policy

torch.set_num_threads(1)


def _update(ppo: OfflinePPO, seed: int) -> None:
    ppo.round(obs_batch(16, seed), lambda o, a: torch.randn(a.shape[0], generator=torch.Generator().manual_seed(seed)),
              0.0, torch.Generator().manual_seed(seed))


def test_rejected_update_restores_the_accepted_weights_bit_for_bit(tmp_path):
    policy = tiny_policy()
    ppo = OfflinePPO(policy, OfflinePPOConfig(batch_size=16, minibatch_size=8, epochs=1, lr=1e-3))
    best = []
    gate = Gate(policy, ppo.optimizer, OPEResult(1.0, 0.0), GateConfig(delta=0.05), tmp_path, on_best=best.append)
    _update(ppo, 1)
    assert gate.decide(1, OPEResult(1.2, 0.01)).accepted  # 1.2 >= 1.05: accepted, the anchor moves
    accepted = {k: v.clone() for k, v in policy.state_dict().items()}
    opt_state = {k: {n: t.clone() for n, t in s.items() if torch.is_tensor(t)}
                 for k, s in ppo.optimizer.state_dict()["state"].items()}
    _update(ppo, 2)
    assert any(not torch.equal(accepted[k], v) for k, v in policy.state_dict().items())
    d = gate.decide(2, OPEResult(1.25, 0.01))  # 1.25 < 1.2 * 1.05 = 1.26: rejected
    assert not d.accepted and abs(d.threshold - 1.26) < 1e-12
    assert all(torch.equal(accepted[k], v) for k, v in policy.state_dict().items())
    for k, s in ppo.optimizer.state_dict()["state"].items():
        assert all(torch.equal(opt_state[k][n], t) for n, t in s.items() if torch.is_tensor(t))
    lines = [json.loads(x) for x in (tmp_path / "decisions.jsonl").read_text().splitlines()]
    assert [x["accepted"] for x in lines] == [True, False] and len(best) == 1


def test_negative_values_need_a_real_improvement_and_ungated_accepts(tmp_path):
    policy = tiny_policy()
    gate = Gate(policy, None, OPEResult(-1.0, 0.0), GateConfig(delta=0.1), tmp_path)
    assert not gate.decide(1, OPEResult(-0.95, 0.0)).accepted  # needs >= -0.9
    assert gate.decide(2, OPEResult(-0.9, 0.0)).accepted
    ungated = Gate(policy, None, OPEResult(1.0, 0.0), GateConfig(enabled=False), tmp_path / "u")
    d = ungated.decide(1, OPEResult(0.5, 0.0))
    assert d.accepted and not d.would_accept and ungated.j_accepted == 0.5
