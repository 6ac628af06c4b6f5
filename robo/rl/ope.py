"""Off-policy evaluation behind one protocol: ``estimate(policy, seed) -> OPEResult(value, spread)``.

AM-Q (RL-100 / Uni-O4): from start states drawn from the dataset, roll the candidate policy through the learned
dynamics ensemble for ``horizon`` action chunks; the score of a start state is the mean of min(Q1, Q2)(s, chunk)
over the chunks before the model predicts termination; optionally minus ``penalty`` times the ensemble
disagreement along the way (sparse reward makes AM-Q over-trust the model far from the data).

FQE (d3rlpy's idea): fit Q^pi of the candidate on the dataset's chunk transitions, target
r + gamma^n (1 - terminal) Q_target(s', pi(s')), with pi's chunks at every next state computed once; the score is
mean Q^pi(s0, pi(s0)) over start states.

Both report spread = standard error over start states. Common random numbers: the start states come from the
estimator's own seed (fixed at construction), and everything random in one estimate (the policy's sampling noise,
the elite picked per model step) from the ``seed`` argument, so two candidates scored with the same seed see the
same states and the same noise.

The policy is run as it ships: ``policy.predict`` (deterministic DDIM for diffusion policies) with a seeded
generator. Policies observe the low-dim state keys; image policies are refused (their observations cannot be
produced by a state-space model).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from tqdm import tqdm

from robo.rl.critic import IQLCritic, mlp, Standardizer
from robo.rl.dynamics import DynamicsEnsemble
from robo.rl.transitions import OfflineData, obs_windows


@dataclass
class OPEResult:
    value: float  # the estimate of the policy's value J
    spread: float  # standard error over start states
    per_start: np.ndarray = field(default_factory=lambda: np.zeros(0))  # score per start state
    extra: dict[str, float] = field(default_factory=dict)  # estimator-specific diagnostics


class OPEEstimator(Protocol):
    name: str

    def estimate(self, policy: Any, seed: int = 0) -> OPEResult: ...


def executed_chunk(policy: Any, actions: torch.Tensor) -> torch.Tensor:
    """The part of a predicted chunk (B, T, A) the runner executes: n_action_steps from index n_obs - 1."""
    lo = policy.spec.n_obs - 1
    return actions[:, lo: lo + policy.spec.n_action_steps]


def _predict(policy: Any, obs: dict, generator: torch.Generator) -> torch.Tensor:
    with torch.no_grad():
        return policy.predict(obs, generator=generator).float().cpu()


def _start_indices(data: OfflineData, n: int, source: str, seed: int) -> np.ndarray:
    if source == "episode_starts":
        pool = np.concatenate([[0], data.episode_ends[:-1]])
    elif source == "all":
        pool = data.chunks.index
    else:
        raise ValueError(f"start_states must be 'episode_starts' or 'all', got '{source}'")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(pool, size=n, replace=len(pool) < n))


def _check_policy(policy: Any, data: OfflineData, chunk: int) -> None:
    if policy.spec.n_action_steps != chunk:
        raise ValueError(f"the policy executes {policy.spec.n_action_steps} actions per chunk but the transitions "
                         f"were built with chunk={chunk}; rebuild them with --chunk {policy.spec.n_action_steps}")
    obs_windows(data, np.zeros(1, np.int64), policy.spec.n_obs, list(policy.spec.obs_keys))  # refuses image keys


@dataclass
class AMQConfig:
    horizon: int = 10  # model rollout length in action chunks (each chunk is n_action_steps model steps)
    starts: int = 128  # start states per estimate
    start_states: str = "all"  # "all" dataset states or "episode_starts"
    penalty: float = 0.0  # subtract penalty * mean ensemble disagreement (standardised state units)
    terminal_threshold: float = 0.5  # predicted termination probability that ends a model rollout
    seed: int = 0  # which start states (fixed for the estimator's life: common random numbers)


class AMQ:
    name = "amq"

    def __init__(self, data: OfflineData, critic: IQLCritic, dynamics: DynamicsEnsemble, config: AMQConfig,
                 chunk: int):
        self.data, self.critic, self.dynamics, self.config, self.chunk = data, critic, dynamics, config, chunk
        self.start_idx = _start_indices(data, config.starts, config.start_states, config.seed)
        # where each state key lives in the state vector, to rebuild policy observations from model states
        self.slices, pos = {}, 0
        for k in data.state_keys:
            width = int(np.prod(data.obs[k].shape[1:]))
            self.slices[k] = (pos, pos + width, data.obs[k].shape[1:])
            pos += width

    def _obs_from_history(self, history: list[torch.Tensor], keys: list[str]) -> dict:
        stacked = torch.stack(history, 1)  # (B, n_obs, S)
        return {k: stacked[:, :, a:b].reshape(stacked.shape[0], stacked.shape[1], *shape).numpy()
                for k, (a, b, shape) in self.slices.items() if k in keys}

    @torch.no_grad()
    def estimate(self, policy: Any, seed: int = 0) -> OPEResult:
        _check_policy(policy, self.data, self.chunk)
        cfg, n_obs, keys = self.config, policy.spec.n_obs, list(policy.spec.obs_keys)
        gen = torch.Generator().manual_seed(int(seed))
        window = obs_windows(self.data, self.start_idx, n_obs, self.data.state_keys)
        history = [torch.as_tensor(np.concatenate([window[k][:, i].reshape(len(self.start_idx), -1)
                                                   for k in self.data.state_keys], 1)) for i in range(n_obs)]
        b = len(self.start_idx)
        alive = torch.ones(b, dtype=torch.bool)
        q_sum, count, dis_sum = torch.zeros(b), torch.zeros(b), torch.zeros(b)
        for _ in range(cfg.horizon):
            s = history[-1]
            act = executed_chunk(policy, _predict(policy, self._obs_from_history(history[-n_obs:], keys), gen))
            q = self.critic.q(s, act.reshape(b, -1))
            q_sum += torch.where(alive, q, 0.0)
            count += alive.float()
            for j in range(act.shape[1]):
                s, _, term_p, dis = self.dynamics.step(s, act[:, j], gen)
                dis_sum += torch.where(alive, dis, 0.0)
                history.append(s)
                alive &= term_p < cfg.terminal_threshold
            if not alive.any():
                break
        score = q_sum / count.clamp(min=1)
        disagreement = dis_sum / (count.clamp(min=1) * self.chunk)
        score = score - cfg.penalty * disagreement
        per = score.numpy()
        return OPEResult(float(per.mean()), float(per.std() / np.sqrt(len(per))), per,
                         {"disagreement": float(disagreement.mean()), "terminated": float((~alive).float().mean())})


@dataclass
class FQEConfig:
    hidden: tuple[int, ...] = (256, 256)  # Q network widths
    lr: float = 3e-4  # Adam learning rate
    steps: int = 3000  # optimiser steps per estimate
    batch_size: int = 256  # transitions per step
    polyak: float = 0.005  # target network update rate
    starts: int = 128  # start states the value is averaged over
    start_states: str = "episode_starts"  # "episode_starts" (J as defined) or "all"
    seed: int = 0  # start states and network initialisation
    progress: bool = False  # progress bar per fit


class FQE:
    name = "fqe"

    def __init__(self, data: OfflineData, config: FQEConfig, chunk: int):
        self.data, self.config, self.chunk = data, config, chunk
        self.start_idx = _start_indices(data, config.starts, config.start_states, config.seed)

    def _policy_chunks(self, policy: Any, index: np.ndarray, gen: torch.Generator, batch: int = 1024) -> torch.Tensor:
        out = []
        for i in range(0, len(index), batch):
            obs = obs_windows(self.data, index[i:i + batch], policy.spec.n_obs, list(policy.spec.obs_keys))
            out.append(executed_chunk(policy, _predict(policy, obs, gen)).reshape(len(index[i:i + batch]), -1))
        return torch.cat(out)

    def estimate(self, policy: Any, seed: int = 0) -> OPEResult:
        _check_policy(policy, self.data, self.chunk)
        cfg, c = self.config, self.data.chunks
        gen = torch.Generator().manual_seed(int(seed))
        next_act = self._policy_chunks(policy, c.next_index, gen)
        start_act = self._policy_chunks(policy, self.start_idx, gen)
        torch.manual_seed(cfg.seed)
        s_norm, a_norm = Standardizer(c.state.shape[1]), Standardizer(c.action.shape[1])
        s_norm.fit(np.concatenate([c.state, c.next_state]))
        a_norm.fit(c.action)
        q = mlp(c.state.shape[1] + c.action.shape[1], cfg.hidden, 1)
        q_target = copy.deepcopy(q)
        opt = torch.optim.Adam(q.parameters(), lr=cfg.lr)
        s, a, r = (torch.as_tensor(x) for x in (c.state, c.action, c.reward))
        s2, disc = torch.as_tensor(c.next_state), torch.as_tensor(c.discount * ~c.terminal)
        f = lambda net, x, y: net(torch.cat([s_norm(x), a_norm(y)], -1)).squeeze(-1)  # noqa: E731
        rng = np.random.default_rng(cfg.seed)
        online, target = list(q.parameters()), list(q_target.parameters())
        loss = torch.zeros(())
        for _ in tqdm(range(cfg.steps), desc="FQE", disable=not cfg.progress, leave=False):
            idx = torch.as_tensor(rng.integers(0, len(r), min(cfg.batch_size, len(r))))
            with torch.no_grad():
                y = r[idx] + disc[idx] * f(q_target, s2[idx], next_act[idx])
            loss = ((f(q, s[idx], a[idx]) - y) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                torch._foreach_lerp_(target, online, cfg.polyak)
        with torch.no_grad():
            per = f(q, s[self.start_idx_rows()], start_act).numpy()
        return OPEResult(float(per.mean()), float(per.std() / np.sqrt(len(per))), per,
                         {"td_loss": float(loss.detach())})

    def start_idx_rows(self) -> torch.Tensor:
        """Rows of the chunk table whose first step is each start index (every step starts a chunk)."""
        row_of = {int(t): i for i, t in enumerate(self.data.chunks.index)}
        return torch.as_tensor([row_of[int(t)] for t in self.start_idx])


def compare(estimator: OPEEstimator, old: Any, new: Any, seed: int) -> tuple[OPEResult, OPEResult]:
    """Both candidates under common random numbers (the same seed: start states and noise)."""
    return estimator.estimate(old, seed), estimator.estimate(new, seed)
