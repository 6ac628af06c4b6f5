"""The PPO core and offline PPO across the denoising steps: ratio exactly 1 at first, gradients reach the denoiser,
last-K' masking, the decaying clip, and GAE at chunk level."""

from __future__ import annotations

import pytest
import torch

from robo.rl.offline import OfflinePPO, OfflinePPOConfig, logprob_for_ppo, measure_ratio_spread, sample_for_ppo
from robo.rl.ppo import PPOConfig, chunk_gae, clip_at, clipped_surrogate, ppo_step, trainable_mask
from robo.rl.toy import tiny_obs, tiny_policy

torch.set_num_threads(1)
obs_batch = tiny_obs


@pytest.mark.parametrize("kind", ["diffusion", "gaussian"])
def test_first_minibatch_ratio_is_exactly_one(kind):
    policy = tiny_policy(kind)
    ppo = OfflinePPO(policy, OfflinePPOConfig(batch_size=16, minibatch_size=8, epochs=1))
    out = ppo.round(obs_batch(), lambda o, a: torch.randn(a.shape[0]), 0.0, torch.Generator().manual_seed(0))
    assert out["first_ratio_mean"] == [1.0] * (5 if kind == "diffusion" else 1)
    # and the update moved the policy: the last minibatch's ratios are no longer all 1
    assert max(abs(r - 1) for r in out["last"]["ratio_max"] + out["last"]["ratio_min"]) > 0


def test_recomputed_logprobs_match_sampling_after_floor_change():
    policy = tiny_policy()
    OfflinePPO(policy, OfflinePPOConfig(sigma_min=0.1))
    obs = obs_batch()
    _, chain, logp = sample_for_ppo(policy, obs, torch.Generator().manual_seed(3))
    assert torch.equal(logprob_for_ppo(policy, obs, chain), logp)


def test_gradients_reach_the_denoiser_not_the_frozen_encoder():
    policy = tiny_policy()
    ppo = OfflinePPO(policy, OfflinePPOConfig(batch_size=16, minibatch_size=16, epochs=1))
    before_den = [p.detach().clone() for p in policy.denoiser.parameters()]
    before_enc = [p.detach().clone() for p in policy.encoder.parameters()]
    ppo.round(obs_batch(), lambda o, a: torch.linspace(-1, 1, a.shape[0]), 0.0, torch.Generator().manual_seed(0))
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.denoiser.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before_den, policy.denoiser.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(before_enc, policy.encoder.parameters()))


def test_last_k_mask_zeroes_the_early_steps_contribution():
    logp_old = torch.zeros(4, 5)
    logp_new = torch.zeros(4, 5, requires_grad=True)
    adv = torch.tensor([1.0, -1.0, 2.0, 0.5])
    loss, _ = clipped_surrogate(logp_new, logp_old, adv, 0.2, trainable_mask(5, 2))
    loss.backward()
    assert torch.all(logp_new.grad[:, :3] == 0)
    assert torch.all(logp_new.grad[:, 3:] != 0)
    with pytest.raises(ValueError, match="trainable_last_k"):
        trainable_mask(5, 6)


def test_clip_limits_the_gradient_and_decays():
    # ratio e^0.5 > 1 + eps with a positive advantage: clipped, so no gradient flows
    logp_new = torch.full((2, 1), 0.5, requires_grad=True)
    loss, stats = clipped_surrogate(logp_new, torch.zeros(2, 1), torch.ones(2), 0.2)
    loss.backward()
    assert torch.all(logp_new.grad == 0) and float(stats["clip_frac_mean"]) == 1.0
    cfg = PPOConfig(clip_eps=0.25, clip_eps_final=0.05)
    assert clip_at(cfg, 0.0) == 0.25 and abs(clip_at(cfg, 0.5) - 0.15) < 1e-12 and clip_at(cfg, 2.0) == 0.05


def test_target_kl_skips_the_step():
    w = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.SGD([w], lr=1.0)
    res = ppo_step(opt, [w], lambda: (w + 2.0).expand(4, 3), torch.zeros(4, 3), torch.ones(4),
                   PPOConfig(target_kl=0.01), 0.0)
    assert res.stopped_early and torch.equal(w.detach(), torch.zeros(3))


def test_chunk_gae_bootstraps_at_truncation_not_at_termination():
    r = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    v = torch.tensor([[0.5, 0.5], [0.5, 0.5]])
    nv = torch.tensor([[0.5, 0.5], [9.0, 2.0]])
    term = torch.tensor([[False, False], [True, False]])
    end = torch.tensor([[False, False], [True, True]])  # env 0 terminated, env 1 truncated at t = 1
    adv, ret = chunk_gae(r, v, nv, term, end, gamma_chunk=0.9, lam=1.0)
    assert torch.allclose(ret[1], torch.tensor([1.0, 0.9 * 2.0]))
    assert torch.allclose(ret[0], torch.tensor([0.9 * 1.0, 0.9 * 0.9 * 2.0]))


def test_ratio_spread_measurement_shrinks_with_a_larger_floor():
    rows = measure_ratio_spread(tiny_policy(), obs_batch(32), floors=(0.01, 0.1), lr=1e-3)
    spread = [max(r["step_ratio_max"][-1] - 1, 1 - r["step_ratio_min"][-1]) for r in rows]
    assert spread[1] < spread[0]
