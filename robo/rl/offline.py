"""Offline PPO across the denoising steps (RL-100 stage 2's policy update).

At dataset states the anchor (last accepted) policy samples action chunks through its stochastic denoising chain
and records each step's log-prob; the critic scores the executed part of each chunk (advantage A, one per chunk);
then a few clipped-surrogate minibatch steps move the policy, with the SAME A for every denoising step. Chains are
re-sampled from the current weights every round, so the first minibatch's ratios are exactly 1 (tested).

The std floor. ``sigma_min`` floors each chain step's std in sampling AND likelihood (policies/diffusion.py keeps
them on one grid). At 0.01 the last, low-noise steps have densities so sharp that one Adam step spreads the ratios
far outside any clip range; ``measure_ratio_spread`` measures that for a list of floors (docs/offline_rl.md has
the figures) and ``OfflinePPOConfig.sigma_min`` sets the floor used for RL (an inference field of the checkpoint
config, so the improved checkpoint records it). Deployment runs deterministic DDIM (eta 0), which the floor does
not touch.

Policies: a DiffusionPolicy (chains of K steps) or a GaussianPolicy (K = 1: the chunk itself), through
``sample_for_ppo`` / ``logprob_for_ppo``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from robo.rl.ppo import PPOConfig, PPOStepResult, clip_at, ppo_step, trainable_mask


@dataclass
class OfflinePPOConfig:
    lr: float = 1e-5  # Adam learning rate of the policy update (1e-4 spreads ratios too fast; see docs)
    batch_size: int = 256  # dataset states per round (one chain sampled at each)
    minibatch_size: int = 64  # states per PPO optimiser step
    epochs: int = 2  # passes over a round's chains
    sigma_min: float = 0.1  # chain std floor for sampling and likelihood during RL (DPPO 0.1; BC default 0.01)
    train_encoder: bool = False  # RL-100 freezes the observation encoder during RL
    ppo: PPOConfig = field(default_factory=lambda: PPOConfig(clip_eps=0.25, clip_eps_final=0.05))


def prepare_policy(policy: Any, config: OfflinePPOConfig) -> list[torch.nn.Parameter]:
    """Put ``policy`` in RL mode: shipped (EMA) weights already loaded, EMA off (PPO moves the weights that ship),
    the RL std floor set. Returns the trainable parameters (encoder frozen unless ``train_encoder``)."""
    policy.ema = None  # the EMA shadow would otherwise be saved as the shipped weights: keep one set of weights
    policy.train()
    if policy.kind == "diffusion":
        policy.config.sigma_min = float(config.sigma_min)
    elif policy.kind != "gaussian":
        raise ValueError(f"offline PPO needs a diffusion or Gaussian policy, got '{policy.kind}' (distil after RL)")
    for p in policy.encoder.parameters():
        p.requires_grad_(config.train_encoder)
    return [p for p in policy.parameters() if p.requires_grad]


@torch.no_grad()
def sample_for_ppo(policy: Any, obs: dict, generator: torch.Generator | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (actions (B, T, A) raw, stored sample for logprob_for_ppo, log-probs (B, K))."""
    if policy.kind == "diffusion":
        return policy.sample_chain(obs, generator)
    mean, std = policy.distribution(obs, augment=False)
    noise = torch.randn(mean.shape, generator=generator,
                        device=generator.device if generator is not None else mean.device).to(mean.device)
    x = mean + std * noise  # normalised chunk; the density is of x, the env gets it clipped
    from policies.diffusion import gaussian_logprob

    return policy.unnormalize_action(x.clamp(-1.0, 1.0)), x, gaussian_logprob(x, mean, std)[:, None]


def logprob_for_ppo(policy: Any, obs: dict, stored: torch.Tensor) -> torch.Tensor:
    """(B, K) log-probs of what ``sample_for_ppo`` stored, under the current weights (differentiable)."""
    if policy.kind == "diffusion":
        return policy.chain_logprob(obs, stored)
    from policies.diffusion import gaussian_logprob

    mean, std = policy.distribution(obs, augment=False)
    return gaussian_logprob(stored, mean, std)[:, None]


def take(obs: dict, idx: np.ndarray | torch.Tensor) -> dict:
    return {k: v[idx] for k, v in obs.items()}


class OfflinePPO:
    """The policy-update half of offline improvement; the critic gives advantages, the gate decides."""

    def __init__(self, policy: Any, config: OfflinePPOConfig):
        self.policy, self.config = policy, config
        self.params = prepare_policy(policy, config)
        self.optimizer = torch.optim.Adam(self.params, lr=config.lr)

    def round(self, obs: dict, advantage_fn: Any, progress: float, generator: torch.Generator,
              extra_loss: Any = None) -> dict[str, Any]:
        """One round: sample chains at ``obs`` (raw, (B, n_obs, ...)) with the current weights, score them with
        ``advantage_fn(obs, actions) -> (B,)``, then ``epochs`` passes of clipped-surrogate minibatch steps.
        Returns diagnostics: per-step ratio stats of the first and last minibatch, mean advantage, KL, clip."""
        cfg = self.config
        n = len(next(iter(obs.values())))
        # Minibatches are fixed slices, sampled one slice at a time: CPU kernels may round differently per batch
        # shape, and only same-shape recomputation reproduces the sampled log-probs bit for bit (ratio exactly 1).
        slices = [np.arange(s, min(s + cfg.minibatch_size, n)) for s in range(0, n, cfg.minibatch_size)]
        parts = [sample_for_ppo(self.policy, take(obs, idx), generator) for idx in slices]
        actions = torch.cat([p[0] for p in parts])
        with torch.no_grad():
            adv = torch.as_tensor(advantage_fn(obs, actions), dtype=torch.float32)
        perm_gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        first: PPOStepResult | None = None
        last: PPOStepResult | None = None
        steps = 0
        for epoch in range(cfg.epochs):
            order = torch.randperm(len(slices), generator=perm_gen).tolist() if epoch else list(range(len(slices)))
            for j in order:
                idx, (_, stored, logp_old) = slices[j], parts[j]
                mb_obs = take(obs, idx)
                result = ppo_step(self.optimizer, self.params,
                                  lambda: logprob_for_ppo(self.policy, mb_obs, stored), logp_old, adv[idx],
                                  cfg.ppo, progress, extra_loss=extra_loss)
                first = first or result
                last = result
                steps += 1
                if result.stopped_early:
                    break
            if last is not None and last.stopped_early:
                break
        assert first is not None and last is not None
        return {"first_ratio_mean": first.stats["ratio_mean"].tolist(), "last": _brief(last),
                "advantage_mean": float(adv.mean()), "advantage_std": float(adv.std()) if n > 1 else 0.0,
                "clip_eps": clip_at(cfg.ppo, progress), "optimizer_steps": steps,
                "stopped_early": bool(last.stopped_early)}


def _brief(result: PPOStepResult) -> dict[str, Any]:
    s = result.stats
    return {"ratio_min": s["ratio_min"].tolist(), "ratio_max": s["ratio_max"].tolist(),
            "ratio_std": s["ratio_std"].tolist(), "clip_frac": s["clip_frac"].tolist(),
            "approx_kl": float(s["approx_kl_mean"]), "grad_norm": result.grad_norm}


def measure_ratio_spread(policy: Any, obs: dict, floors: tuple[float, ...] = (0.01, 0.03, 0.1), lr: float = 1e-4,
                         seed: int = 0) -> list[dict[str, Any]]:
    """The std-floor measurement: for each floor, on a copy of ``policy``, sample chains at ``obs``, take ONE
    unclipped policy-gradient Adam step with random +-1 advantages at ``lr``, then recompute the chain log-probs.
    Reports the per-denoising-step ratio spread (min / max / std of r_k) and the whole-chain ratio range."""
    rows = []
    for floor in floors:
        pol = copy.deepcopy(policy)
        params = prepare_policy(pol, OfflinePPOConfig(sigma_min=floor))
        opt = torch.optim.Adam(params, lr=lr)
        gen = torch.Generator().manual_seed(seed)
        _, chain, logp_old = pol.sample_chain(obs, gen)
        adv = torch.randint(0, 2, (logp_old.shape[0],), generator=gen).float() * 2 - 1
        logp = pol.chain_logprob(obs, chain)
        loss = -(torch.exp(logp - logp_old) * adv[:, None]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            ratio = torch.exp(pol.chain_logprob(obs, chain) - logp_old)
            chain_ratio = ratio.prod(1)
        rows.append({"sigma_min": floor, "step_ratio_min": ratio.min(0).values.tolist(),
                     "step_ratio_max": ratio.max(0).values.tolist(), "step_ratio_std": ratio.std(0).tolist(),
                     "chain_ratio_min": float(chain_ratio.min()), "chain_ratio_max": float(chain_ratio.max()),
                     "trainable_steps": int(trainable_mask(ratio.shape[1], 0).sum())})
    return rows


def _main() -> None:
    """``python -m robo.rl.offline --checkpoint C --dataset D``: the std-floor measurement on real data."""
    import argparse
    import json

    from policies.checkpoint import load_checkpoint
    from robo.rl.transitions import TransitionConfig, load_offline_data, obs_windows

    parser = argparse.ArgumentParser(description=measure_ratio_spread.__doc__)
    parser.add_argument("--checkpoint", required=True, help="diffusion policy checkpoint")
    parser.add_argument("--dataset", required=True, help="dataset whose states the chains are sampled at")
    parser.add_argument("--floors", type=float, nargs="*", default=[0.01, 0.03, 0.1, 0.2], help="std floors")
    parser.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate of the one step")
    parser.add_argument("--states", type=int, default=256, help="dataset states (one chain each)")
    parser.add_argument("--seed", type=int, default=0, help="state choice, chains and advantages")
    args = parser.parse_args()
    policy = load_checkpoint(args.checkpoint)
    data = load_offline_data(args.dataset, TransitionConfig(chunk=policy.spec.n_action_steps, allow_all_success=True))
    idx = np.random.default_rng(args.seed).choice(data.chunks.index, args.states)
    obs = obs_windows(data, idx, policy.spec.n_obs, list(policy.spec.obs_keys))
    rows = measure_ratio_spread(policy, obs, tuple(args.floors), args.lr, args.seed)
    print(f"{'sigma_min':>9}  {'last-step ratio min..max':>24}  {'first-step ratio min..max':>25}  "
          f"chain ratio min..max")
    for r in rows:
        print(f"{r['sigma_min']:9.3g}  {r['step_ratio_min'][-1]:10.3f} .. {r['step_ratio_max'][-1]:10.3f}  "
              f"{r['step_ratio_min'][0]:11.3f} .. {r['step_ratio_max'][0]:10.3f}  "
              f"{r['chain_ratio_min']:.3g} .. {r['chain_ratio_max']:.3g}")
    print(json.dumps(rows))


if __name__ == "__main__":
    _main()
