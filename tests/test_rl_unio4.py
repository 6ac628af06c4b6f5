"""The Uni-O4 diversity term provably changes the gradients: with it, a member's gradient differs from plain BC
and depends on the other members' weights; without it, it does not."""

from __future__ import annotations

import numpy as np
import torch

from robo.rl.toy import tiny_obs, tiny_policy
from robo.rl.unio4 import UniO4Config, diversity_term, ensemble_loss, make_members

torch.set_num_threads(1)


def batch():
    rng = np.random.default_rng(0)
    return {"obs": tiny_obs(16), "action": rng.uniform(-1, 1, (16, 8, 2)).astype(np.float32)}


def member0_grad(members, config):
    for m in members:
        m.zero_grad()
    ensemble_loss(members, batch(), config).backward()
    return torch.cat([p.grad.flatten() for p in members[0].mean_net.parameters()])


def test_diversity_term_changes_gradients_and_couples_members():
    ref = tiny_policy("gaussian")
    cfg_div = UniO4Config(members=3, hidden=(32,), diversity=1.0, bandwidth=0.5)
    cfg_plain = UniO4Config(members=3, hidden=(32,), diversity=0.0)
    members = make_members(ref.spec, ref.normalizer, cfg_div)
    g_div, g_plain = member0_grad(members, cfg_div), member0_grad(members, cfg_plain)
    assert not torch.allclose(g_div, g_plain, atol=1e-7)
    # move member 1: member 0's gradient changes only when the diversity term is on
    with torch.no_grad():
        for p in members[1].mean_net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    assert not torch.allclose(member0_grad(members, cfg_div), g_div, atol=1e-7)
    assert torch.equal(member0_grad(members, cfg_plain), g_plain)


def test_diversity_term_is_lower_for_spread_members():
    same = [torch.zeros(4, 8, 2)] * 3
    apart = [torch.zeros(4, 8, 2), torch.ones(4, 8, 2), -torch.ones(4, 8, 2)]
    assert float(diversity_term(same, 0.5)) == 1.0
    assert float(diversity_term(apart, 0.5)) < 0.2
    assert float(diversity_term(same[:1], 0.5)) == 0.0
