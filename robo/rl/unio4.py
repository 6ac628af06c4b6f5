"""Uni-O4 baseline: an ensemble of K Gaussian behaviour-cloned policies with a diversity term, each then improved
by clipped PPO under the same OPE gate; the member with the best OPE score ships.

The diversity term. Uni-O4 trains its members with a term meant to keep them apart; as shipped it has no
diversity gradient. Here the term is the mean pairwise Gaussian-kernel similarity of the members' mean action
chunks on the same batch, exp(-||mu_i - mu_j||^2 / (2 h^2 D)) (D = chunk size), added to the summed NLL with weight
``diversity``: minimising it pushes members apart, and because nothing is detached, member i's gradient depends
on member j's weights (tests/test_rl_unio4.py checks both). The kernel is bounded, so it cannot outweigh the NLL
by running the means off to infinity.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from policies.gaussian import GaussianPolicy, GaussianPolicyConfig


@dataclass
class UniO4Config:
    members: int = 4  # ensemble size K (Uni-O4: 4)
    bc_steps: int = 2000  # behaviour-cloning optimiser steps for the whole ensemble
    lr: float = 1e-3  # BC learning rate
    batch_size: int = 256  # BC batch (the same states for every member)
    diversity: float = 0.1  # weight of the pairwise similarity penalty (0 = independent members)
    bandwidth: float = 0.5  # kernel bandwidth h in normalised action units
    hidden: tuple[int, ...] = (256, 256)  # member MLP widths
    seed: int = 0  # member initialisation and batches
    progress: bool = True  # progress bar


def diversity_term(means: list[torch.Tensor], bandwidth: float) -> torch.Tensor:
    """Mean pairwise kernel similarity of K mean chunks (B, T, A); 0 for a single member. Lower = more diverse."""
    if len(means) < 2:
        return torch.zeros(())
    flat = torch.stack([m.flatten(1) for m in means])  # (K, B, D)
    d2 = ((flat[:, None] - flat[None]) ** 2).sum(-1)  # (K, K, B)
    sim = torch.exp(-d2 / (2 * bandwidth ** 2 * flat.shape[-1]))
    k = len(means)
    off = ~torch.eye(k, dtype=torch.bool)
    return sim[off].mean()


def ensemble_loss(members: list[GaussianPolicy], batch: dict[str, Any], config: UniO4Config) -> torch.Tensor:
    """Summed member NLL on one batch + diversity * the similarity of their means."""
    nll, means = [], []
    for m in members:
        mean, _ = m.distribution(batch["obs"])
        means.append(mean)
        nll.append(m.compute_loss(batch))
    return torch.stack(nll).sum() + config.diversity * diversity_term(means, config.bandwidth)


def make_members(spec: Any, normalizer: Any, config: UniO4Config) -> list[GaussianPolicy]:
    members = []
    for i in range(config.members):
        torch.manual_seed(config.seed * 1000 + i)
        members.append(GaussianPolicy(copy.deepcopy(spec), copy.deepcopy(normalizer),
                                      GaussianPolicyConfig(hidden=tuple(config.hidden), loss="nll", ema=False)))
    return members


def train_ensemble(dataset: Path, spec: Any, config: UniO4Config, task: str = "") -> list[GaussianPolicy]:
    """Behaviour-clone the K members together on ``dataset`` (windows as the diffusion policy saw them)."""
    from robo.data.sampler import SamplerConfig, SequenceSampler
    from robo.data.store import ZarrDataset

    ds = ZarrDataset.open(dataset)
    sampler = SequenceSampler(ds, SamplerConfig(obs_keys=tuple(spec.obs_keys), n_obs=spec.n_obs,
                                                horizon=spec.horizon))
    members = make_members(spec, sampler.fit_normalizer(), config)
    params = [p for m in members for p in m.parameters()]
    opt = torch.optim.Adam(params, lr=config.lr)
    rng = np.random.default_rng(config.seed)
    for _ in tqdm(range(config.bc_steps), desc="Uni-O4 BC", disable=not config.progress, leave=False):
        loss = ensemble_loss(members, sampler.sample(config.batch_size, rng), config)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for m in members:
        m.extra = {"task": task}
        m.eval()
    return members


def run_unio4(members: list[GaussianPolicy], data: Any, critic: Any, estimator: Any, improve_config: Any,
              out: Path, writer: Any) -> dict[str, Any]:
    """Improve each member under the gate (same critic, same estimator, same common random numbers); the member
    with the best accepted OPE value ships. Returns its index, the per-member values and the policy."""
    from robo.rl.improve import gated_improvement

    results = []
    for i, member in enumerate(members):
        gate, history = gated_improvement(member, data, critic, estimator, improve_config, out / f"member{i}", writer,
                                          label=f"unio4_member{i}")
        results.append({"member": i, "ope_start": history[0]["ope"], "ope_accepted": gate.j_accepted,
                        "accepted": sum(d.accepted for d in gate.decisions)})
    best = int(np.argmax([r["ope_accepted"] for r in results]))
    return {"best_member": best, "members": results, "policy": members[best]}
