"""Dynamics ensemble: E probabilistic MLPs predicting the per-step state delta and reward (Gaussian) and
termination (Bernoulli), the best ``elites`` kept by validation loss (RL-100 / MOPO: 7 members, 5 elites).

All members run as one batched network (weights shaped (E, in, out)), so an ensemble step costs one matmul chain.
Inputs and targets are standardised with statistics stored as buffers. Each member sees its own bootstrap of the
training steps. Rollouts pick one elite per sample from a caller-given generator (so two candidate policies can
be compared with common random numbers) and use its mean prediction; the spread of the elites' mean next states
(in standardised units) is the disagreement, the model's uncertainty.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from robo.rl.critic import Standardizer
from robo.rl.transitions import StepTransitions


@dataclass
class DynamicsConfig:
    members: int = 7  # ensemble size
    elites: int = 5  # members kept for prediction, lowest validation loss
    hidden: tuple[int, ...] = (200, 200, 200)  # MLP widths per member
    lr: float = 1e-3  # Adam learning rate
    weight_decay: float = 1e-5  # Adam weight decay
    steps: int = 4000  # optimiser steps
    batch_size: int = 256  # steps per member per optimiser step
    val_ratio: float = 0.1  # held-out steps for elite selection
    seed: int = 0  # initialisation, bootstrap and split
    progress: bool = True  # progress bar


class EnsembleLinear(nn.Module):
    def __init__(self, members: int, n_in: int, n_out: int):
        super().__init__()
        bound = 1.0 / math.sqrt(n_in)
        self.weight = nn.Parameter(torch.empty(members, n_in, n_out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(members, 1, n_out).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (E, B, in) -> (E, B, out)
        return torch.baddbmm(self.bias, x, self.weight)


class DynamicsEnsemble(nn.Module):
    def __init__(self, state_dim: int, action_dim: int, config: DynamicsConfig):
        super().__init__()
        if not 1 <= config.elites <= config.members:
            raise ValueError(f"need 1 <= elites <= members, got {config.elites} of {config.members}")
        self.state_dim, self.action_dim, self.config = state_dim, action_dim, config
        self.in_norm = Standardizer(state_dim + action_dim)
        self.out_norm = Standardizer(state_dim + 1)  # delta s and reward
        dims = [state_dim + action_dim, *config.hidden]
        self.layers = nn.ModuleList(EnsembleLinear(config.members, a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.head = EnsembleLinear(config.members, dims[-1], 2 * (state_dim + 1) + 1)  # mean, log-var, term logit
        self.max_logvar = nn.Parameter(torch.full((state_dim + 1,), 0.5))
        self.min_logvar = nn.Parameter(torch.full((state_dim + 1,), -10.0))
        self.register_buffer("elite_idx", torch.arange(config.elites))
        self.val_losses: list[float] = []

    def _forward(self, s: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """s, a: (B, .) shared by all members, or (E, B, .) -> standardised (mean, logvar) (E, B, S+1), logit (E, B)."""
        x = self.in_norm(torch.cat([s, a], -1))
        if x.ndim == 2:
            x = x.unsqueeze(0).expand(self.config.members, -1, -1)
        for layer in self.layers:
            x = F.silu(layer(x))
        out = self.head(x)
        d = self.state_dim + 1
        mean, logvar, logit = out[..., :d], out[..., d:2 * d], out[..., -1]
        logvar = self.max_logvar - F.softplus(self.max_logvar - logvar)  # soft bounds (PETS)
        logvar = self.min_logvar + F.softplus(logvar - self.min_logvar)
        return mean, logvar, logit

    def fit(self, data: StepTransitions) -> dict[str, float]:
        cfg = self.config
        torch.manual_seed(cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        n = len(data.state)
        order = rng.permutation(n)
        n_val = max(1, int(n * cfg.val_ratio)) if n > 10 else 0
        val, train = order[:n_val], order[n_val:]
        x_in = np.concatenate([data.state, data.action], 1)
        target = np.concatenate([data.next_state - data.state, data.reward[:, None]], 1)
        self.in_norm.fit(x_in[train])
        has_next = data.has_next[train]
        self.out_norm.fit(target[train][has_next] if has_next.any() else target[train])
        t = {k: torch.as_tensor(v) for k, v in dict(s=data.state, a=data.action, y=target,
                                                        term=data.terminal.astype(np.float32),
                                                        mask=data.has_next.astype(np.float32)).items()}
        opt = torch.optim.Adam(self.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        boot = rng.choice(train, size=(cfg.members, len(train)), replace=True)  # one bootstrap per member
        loss = torch.zeros(())
        for _ in tqdm(range(cfg.steps), desc="dynamics", disable=not cfg.progress, leave=False):
            cols = rng.integers(0, len(train), min(cfg.batch_size, len(train)))
            idx = torch.as_tensor(boot[:, cols])  # (E, B)
            loss = self._loss(t["s"][idx], t["a"][idx], t["y"][idx], t["term"][idx], t["mask"][idx], nll=True)
            loss = loss.sum() + 0.01 * (self.max_logvar.sum() - self.min_logvar.sum())
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            vi = torch.as_tensor(val if n_val else train)
            per_member = self._loss(t["s"][vi], t["a"][vi], t["y"][vi], t["term"][vi], t["mask"][vi], nll=False)
        self.val_losses = per_member.tolist()
        self.elite_idx.copy_(torch.argsort(per_member)[: cfg.elites])
        return {"train_loss": float(loss.detach()), "val_mse_elites": float(per_member[self.elite_idx].mean())}

    def _loss(self, s: torch.Tensor, a: torch.Tensor, y: torch.Tensor, term: torch.Tensor, mask: torch.Tensor,
              nll: bool) -> torch.Tensor:
        """Per-member loss (E,): Gaussian NLL (or MSE) on standardised [delta s (where the next obs exists),
        reward] plus the termination BCE."""
        mean, logvar, logit = self._forward(s, a)
        if y.ndim == 2:  # shared batch (validation): the same targets for every member
            y, term, mask = (v.unsqueeze(0).expand(self.config.members, *v.shape) for v in (y, term, mask))
        yn = self.out_norm(y)
        err = (mean - yn) ** 2
        if nll:
            err = err * torch.exp(-logvar) + logvar
        delta_w = mask.unsqueeze(-1).expand(*mask.shape, self.state_dim)
        weights = torch.cat([delta_w, torch.ones_like(mask)[..., None]], -1)
        gauss = (err * weights).sum((-1, -2)) / weights.sum((-1, -2)).clamp(min=1)
        bce = F.binary_cross_entropy_with_logits(logit, term, reduction="none").mean(-1)
        return gauss + bce

    @torch.no_grad()
    def step(self, s: torch.Tensor, a: torch.Tensor, generator: torch.Generator | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One model step for a batch: (next state, reward, termination probability, disagreement), each (B, ...).
        One elite per sample, drawn from ``generator``; its mean prediction is used."""
        mean, _, logit = self._forward(s, a)
        elites = mean[self.elite_idx]  # (e, B, S+1)
        y = elites * self.out_norm.std + self.out_norm.mean
        pick = torch.randint(0, len(self.elite_idx), (s.shape[0],), generator=generator)
        rows = torch.arange(s.shape[0])
        chosen = y[pick, rows]
        term_p = torch.sigmoid(logit[self.elite_idx][pick, rows])
        disagreement = elites[..., :-1].std(0).mean(-1) if len(self.elite_idx) > 1 else torch.zeros(s.shape[0])
        return s + chosen[:, :-1], chosen[:, -1], term_p, disagreement

    def copy(self) -> DynamicsEnsemble:
        return copy.deepcopy(self)
