"""IQL critic on chunk-level transitions: twin Q with Polyak target networks, V by expectile regression.

    L_V = E |tau - 1(u < 0)| u^2,  u = min(Q1_t, Q2_t)(s, a) - V(s)          (tau = 0.7: an upper expectile)
    L_Q = E (r + gamma^n (1 - terminal) V(s') - Q_i(s, a))^2  for i = 1, 2

V never queries actions outside the data, which is why IQL suits offline data. The advantage for offline PPO is
A = min(Q1, Q2)(s, a) - V(s), batch-normalised by the caller (robo/rl/ppo.normalize).

Inputs are standardised with statistics fitted on the training transitions and stored with the weights; a saved
critic records the fingerprint of its dataset, and loading it against another dataset is refused.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from robo.rl.transitions import ChunkTransitions


class CriticMismatch(ValueError):
    """A saved critic that does not belong to this dataset or policy."""


@dataclass
class IQLConfig:
    hidden: tuple[int, ...] = (256, 256)  # MLP widths for Q and V
    lr: float = 3e-4  # Adam learning rate
    expectile: float = 0.7  # tau of the V expectile regression (RL-100: 0.7; 0.5 = SARSA's mean)
    polyak: float = 0.005  # target-network update rate per step
    steps: int = 5000  # optimiser steps
    batch_size: int = 256  # transitions per step
    seed: int = 0  # initialisation and batch order
    progress: bool = True  # progress bar


def mlp(n_in: int, hidden: tuple[int, ...], n_out: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(n_in, width), nn.LayerNorm(width), nn.Mish()]
        n_in = width
    layers.append(nn.Linear(n_in, n_out))
    return nn.Sequential(*layers)


class Standardizer(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def fit(self, x: np.ndarray) -> None:
        self.mean.copy_(torch.as_tensor(x.mean(0)))
        self.std.copy_(torch.as_tensor(np.maximum(x.std(0), 1e-3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class IQLCritic(nn.Module):
    def __init__(self, state_dim: int, action_dim: int, config: IQLConfig):
        super().__init__()
        self.state_dim, self.action_dim, self.config = state_dim, action_dim, config
        self.s_norm, self.a_norm = Standardizer(state_dim), Standardizer(action_dim)
        self.q1 = mlp(state_dim + action_dim, config.hidden, 1)
        self.q2 = mlp(state_dim + action_dim, config.hidden, 1)
        self.v = mlp(state_dim, config.hidden, 1)
        self.q1_target, self.q2_target = copy.deepcopy(self.q1), copy.deepcopy(self.q2)
        for p in [*self.q1_target.parameters(), *self.q2_target.parameters()]:
            p.requires_grad_(False)
        self.meta: dict[str, Any] = {}

    def _sa(self, s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.s_norm(s), self.a_norm(a)], -1)

    def q_values(self, s: torch.Tensor, a: torch.Tensor, target: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        x = self._sa(s, a)
        q1, q2 = (self.q1_target, self.q2_target) if target else (self.q1, self.q2)
        return q1(x).squeeze(-1), q2(x).squeeze(-1)

    def q(self, s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """min(Q1, Q2) of the online networks: the pessimistic value AM-Q and the advantage use."""
        return torch.minimum(*self.q_values(s, a))

    def value(self, s: torch.Tensor) -> torch.Tensor:
        return self.v(self.s_norm(s)).squeeze(-1)

    def advantage(self, s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return self.q(s, a) - self.value(s)

    # --- fitting ----------------------------------------------------------------------------------------------
    def fit(self, data: ChunkTransitions, log: Any = None) -> dict[str, float]:
        cfg = self.config
        torch.manual_seed(cfg.seed)
        self.s_norm.fit(np.concatenate([data.state, data.next_state]))
        self.a_norm.fit(data.action)
        t = {k: torch.as_tensor(getattr(data, k)) for k in ("state", "action", "reward", "discount", "next_state")}
        not_done = torch.as_tensor(~data.terminal).float()
        q_opt = torch.optim.Adam([*self.q1.parameters(), *self.q2.parameters()], lr=cfg.lr)
        v_opt = torch.optim.Adam(self.v.parameters(), lr=cfg.lr)
        rng = np.random.default_rng(cfg.seed)
        online_params = [*self.q1.parameters(), *self.q2.parameters()]
        target_params = [*self.q1_target.parameters(), *self.q2_target.parameters()]
        n = len(data.reward)
        stats: dict[str, float] = {}
        for step in tqdm(range(cfg.steps), desc="IQL critic", disable=not cfg.progress, leave=False):
            idx = torch.as_tensor(rng.integers(0, n, min(cfg.batch_size, n)))
            s, a, r = t["state"][idx], t["action"][idx], t["reward"][idx]
            with torch.no_grad():
                q_t = torch.minimum(*self.q_values(s, a, target=True))
            u = q_t - self.value(s)
            v_loss = (torch.abs(cfg.expectile - (u < 0).float()) * u * u).mean()
            v_opt.zero_grad()
            v_loss.backward()
            v_opt.step()
            with torch.no_grad():
                target = r + t["discount"][idx] * not_done[idx] * self.value(t["next_state"][idx])
            q1, q2 = self.q_values(s, a)
            q_loss = ((q1 - target) ** 2).mean() + ((q2 - target) ** 2).mean()
            q_opt.zero_grad()
            q_loss.backward()
            q_opt.step()
            with torch.no_grad():
                torch._foreach_lerp_(target_params, online_params, cfg.polyak)
            if step % 100 == 0 or step == cfg.steps - 1:
                stats = {"v_loss": float(v_loss.detach()), "q_loss": float(q_loss.detach()) / 2}
                if log is not None:
                    log(step, stats)
        return stats

    # --- persistence ------------------------------------------------------------------------------------------
    def save(self, path: str | Path, fingerprint: str, extra: dict[str, Any] | None = None) -> None:
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(path / "critic.safetensors"))
        meta = {"state_dim": self.state_dim, "action_dim": self.action_dim, "config": asdict(self.config),
                "dataset_fingerprint": fingerprint, **(extra or {})}
        (path / "critic.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, path: str | Path, fingerprint: str | None = None) -> IQLCritic:
        from safetensors.torch import load_file

        path = Path(path)
        if not (path / "critic.json").is_file() or not (path / "critic.safetensors").is_file():
            raise FileNotFoundError(f"{path} is not a saved critic (critic.json / critic.safetensors missing)")
        meta = json.loads((path / "critic.json").read_text())
        if fingerprint is not None and meta.get("dataset_fingerprint") != fingerprint:
            raise CriticMismatch(f"critic {path} was fitted on another dataset (fingerprint "
                                 f"{meta.get('dataset_fingerprint')}, this one {fingerprint}); refit it on this data")
        cfg = meta["config"]
        cfg["hidden"] = tuple(cfg["hidden"])
        critic = cls(int(meta["state_dim"]), int(meta["action_dim"]), IQLConfig(**cfg))
        critic.load_state_dict(load_file(str(path / "critic.safetensors")))
        critic.meta = meta
        return critic


class CriticValue(nn.Module):
    """The offline critic's V(s) as the online PPO value function (``robo finetune --value-from-critic``): the same
    network and input standardisation, fed the critic's state (the last step of its low-dim keys), then fine-tuned
    by PPO's value loss. It starts from what the offline data taught instead of from zero, so the Monte-Carlo
    warm-up iterations are skipped. Refused in one line when the critic's task, discount or chunk is not the online
    stage's, or when the policy does not observe the critic's state keys."""

    def __init__(self, critic: IQLCritic, state_keys: tuple[str, ...]):
        super().__init__()
        self.state_keys = tuple(state_keys)
        self.s_norm, self.v = critic.s_norm, critic.v

    @classmethod
    def from_saved(cls, path: str | Path, task: str, gamma: float, chunk: int, obs_keys: list[str]) -> CriticValue:
        critic = IQLCritic.load(path)
        meta = critic.meta
        if "state_keys" not in meta:
            raise CriticMismatch(f"critic {path} does not record its state keys (saved by an older version); refit it "
                                 f"with robo improve")
        if meta.get("task") and task and meta["task"] != task:
            raise CriticMismatch(f"critic {path} was fitted on task '{meta['task']}', this run refines '{task}'")
        if abs(float(meta.get("gamma", gamma)) - gamma) > 1e-9 or int(meta.get("chunk", chunk)) != chunk:
            raise CriticMismatch(f"critic {path} values chunks of {meta.get('chunk')} steps at gamma "
                                 f"{meta.get('gamma')}; this run executes {chunk} at gamma {gamma}: pass the same "
                                 f"--gamma or refit the critic")
        missing = [k for k in meta["state_keys"] if k not in obs_keys]
        if missing:
            raise CriticMismatch(f"critic {path} reads {missing}, which the policy does not observe; refit it with "
                                 f"--state-keys {','.join(obs_keys)}")
        return cls(critic, tuple(meta["state_keys"]))

    def forward(self, obs: dict[str, Any]) -> torch.Tensor:
        parts = []
        for key in self.state_keys:
            value = torch.as_tensor(obs[key])
            value = value[:, -1] if value.ndim >= 3 else value  # the newest step of the observation history
            parts.append(value.reshape(len(value), -1).float())
        device = next(self.v.parameters()).device
        return self.v(self.s_norm(torch.cat(parts, dim=1).to(device))).squeeze(-1)
