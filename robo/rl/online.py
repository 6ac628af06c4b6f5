"""Online PPO in simulation, one trainer for three actors: the denoising chain of a diffusion policy (DPPO / RL-100
online stage), a Gaussian chunk policy (Uni-O4's online stage), and a noise-space policy steering a frozen one-step
student (robo/rl/noise_ppo.py). Read top to bottom: actors -> value net -> rollout -> GAE -> update -> train loop.

What each iteration does:
1. Roll out ``chunks_per_iter`` action chunks in each of ``num_envs`` sub-process envs. A decision samples a chunk
   (for the chain actor: a stochastic DDIM chain, std floored at ``sigma_floor``, noise draws clipped to
   ``noise_clip`` std) and executes ``n_action_steps`` of it. The chunk's reward is sum_j gamma^j r_j over the steps
   executed; its discount to the next decision is gamma^n_exec. An env whose episode ends mid-chunk holds still (zero
   deltas, gripper open) for the rest of the chunk: vector envs step in lockstep, and the leftover actions belong to
   the finished episode. Those steps are real env steps and are counted.
2. GAE per env over the chunk sequence (robo.rl.ppo.chunk_gae): terminal (success) stops bootstrapping, truncation
   (time limit) bootstraps from V of the final observation history.
3. ``epochs`` passes of minibatch PPO (robo.rl.ppo.ppo_step: the same clipped-surrogate core as offline PPO) with
   a clipped value loss; stop the iteration early once approx-KL passes ``target_kl``. The first
   ``value_warmup_iters`` iterations fit only the value net, to Monte-Carlo returns (lambda = 1), so the first
   policy gradient does not follow a random critic.

Only the executed part of a chunk receives gradient: the log-probability of a chunk covers the action dims of only
the executed time indices ``n_obs-1 .. n_obs-1+n_exec-1`` (the rest never reaches the env, so its likelihood
carries no signal). Log-probs are in normalised action space, averaged per dimension (DPPO's convention; see
``masked_logprob``), shape (B, K): K denoising steps (K = 1 for Gaussian and noise-space actors). Noise clipping truncates the Gaussian; its density is not renormalised (as in DPPO), a
bias of at most P(|z| > 3) = 0.3% per dimension.

``trainable_last_k``: only the last K' denoising steps enter the loss (earlier steps run without gradient). The
denoiser is shared by all steps, so unlike DPPO's separate trainable copy the early steps still move slightly; the
payoff is that the refined policy ships as an ordinary checkpoint.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from policies.diffusion import gaussian_logprob
from policies.noise_steering import clipped_noise
from robo.rl.ppo import PPOConfig, chunk_gae, clipped_value_loss, ppo_step

HOLD_ACTION = np.array([0, 0, 0, 0, 0, 0, -1], np.float32)  # OSC deltas zero, gripper open: stay still


def executed_mask(spec: Any, n_exec: int | None = None) -> torch.Tensor:
    """(horizon,) bool: the chunk indices the runner executes (the part that earns the chunk's reward)."""
    n_exec = n_exec or spec.n_action_steps
    mask = torch.zeros(spec.horizon, dtype=torch.bool)
    mask[spec.n_obs - 1: spec.n_obs - 1 + n_exec] = True
    return mask


def masked_logprob(x: torch.Tensor, mean: torch.Tensor, sigma: torch.Tensor, time_mask: torch.Tensor | None
                   ) -> torch.Tensor:
    """Gaussian log-density of (B, T, A) over A and the masked T indices, AVERAGED per dimension -> (B,).

    PPO's convention here (as in DPPO): the per-dimension mean, so a ratio is the geometric mean of per-dimension
    ratios and clip ranges / KL targets do not scale with the chunk size. The policies' own ``chain_logprob`` sums
    (a constant factor: sum = mean * dims); both are documented in docs/online_rl.md.
    """
    if time_mask is not None:
        m = time_mask.to(x.device)
        x, mean = x[:, m], mean[:, m]
        sigma = sigma[m] if sigma.ndim >= 2 else sigma  # a per-(T, A) std is masked along with the samples
    return gaussian_logprob(x, mean, sigma) / x[0].numel()


# --- actors ------------------------------------------------------------------------------------------------------
class Actor(Protocol):
    """What the trainer needs from a policy: sample with log-probs, recompute log-probs, and the shipped policy."""

    num_logp_steps: int  # K: columns of the log-prob tensor (denoising steps; 1 for a Gaussian)
    policy: Any  # the policy whose normaliser and spec the trainer uses (and that is evaluated/saved)

    def parameters(self) -> list[nn.Parameter]: ...
    def act(self, obs: dict[str, Any], generator: torch.Generator | None
            ) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]: ...  # (actions (B,T,A) raw, record, logp (B, K))
    def logprob(self, obs: dict[str, Any], record: torch.Tensor) -> torch.Tensor: ...  # (B, K), differentiable


class ChainActor:
    """A DiffusionPolicy's stochastic DDIM chain as K Gaussian policies, on the policy's own time grid and
    ``ddim_step`` (the function predict, sample_chain and chain_logprob use), so sampling and likelihood agree."""

    def __init__(self, policy: Any, sigma_floor: float = 0.1, noise_clip: float = 3.0, steps: int = 0,
                 eta: float = 1.0, trainable_last_k: int = 0, executed_only: bool = True, mean_eta: float = 1.0):
        self.policy, self.sigma_floor, self.noise_clip, self.eta = policy, sigma_floor, noise_clip, eta
        # The mean of each step is the DDIM update at ``mean_eta``. 1 (default) = DDPM-like means, what
        # policy.sample_chain uses. 0 = the deterministic sampler predict() ships, with exploration noise added
        # around it; measured on Lift it failed: 10 steps of sigma-floor noise on top of eta-0 means, which assume no
        # fresh noise, gave 0% training success where eta 1 kept 67-100%.
        self.mean_eta = mean_eta
        self.grid = policy.time_grid(steps or None)
        self.num_logp_steps = len(self.grid.timesteps)
        if not 0 <= trainable_last_k <= self.num_logp_steps:
            raise ValueError(f"trainable_last_k must be in [0, {self.num_logp_steps}], got {trainable_last_k}")
        self.first_trainable = self.num_logp_steps - trainable_last_k if trainable_last_k else 0
        self.time_mask = executed_mask(policy.spec) if executed_only else None
        policy.encoder.requires_grad_(False)  # RL-100: the encoder is frozen during RL

    def parameters(self) -> list[nn.Parameter]:
        return [p for p in self.policy.denoiser.parameters() if p.requires_grad]

    def _cond(self, obs: dict[str, Any]) -> torch.Tensor:
        with torch.no_grad():
            feats = self.policy.encoder(self.policy.normalize_obs(obs), augment=False)
        return self.policy.denoiser.condition(feats)

    def _step(self, x: torch.Tensor, k: int, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.policy.denoiser.step(x, self.grid.timesteps[k].to(x.device), cond)
        mean, sigma = self.policy.ddim_step(x, out, self.grid, k, self.eta, self.sigma_floor)
        if self.mean_eta != self.eta:
            mean, _ = self.policy.ddim_step(x, out, self.grid, k, self.mean_eta, 0.0)
        return mean, sigma

    def act(self, obs: dict[str, Any], generator: torch.Generator | None = None
            ) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            cond = self._cond(obs)
            x = self.policy.initial_noise(cond.shape[0], generator)
            chain, logps = [x], []
            for k in range(self.num_logp_steps):
                mean, sigma = self._step(x, k, cond)
                x = mean + sigma * clipped_noise(mean.shape, generator, self.noise_clip, mean.device)
                logps.append(masked_logprob(x, mean, sigma, self.time_mask))
                chain.append(x)
            actions = self.policy.unnormalize_action(x.clamp(-1.0, 1.0))
        return actions.cpu().numpy(), torch.stack(chain, 1), torch.stack(logps, 1)

    def logprob(self, obs: dict[str, Any], record: torch.Tensor) -> torch.Tensor:
        cond = self._cond(obs)
        logps = []
        for k in range(self.num_logp_steps):
            with torch.set_grad_enabled(torch.is_grad_enabled() and k >= self.first_trainable):
                mean, sigma = self._step(record[:, k], k, cond)
                logps.append(masked_logprob(record[:, k + 1], mean, sigma, self.time_mask))
        return torch.stack(logps, 1)


class GaussianActor:
    """A GaussianPolicy's chunk distribution (K = 1); the record is the normalised, unclipped sample."""

    num_logp_steps = 1

    def __init__(self, policy: Any, noise_clip: float = 3.0, executed_only: bool = True, std_floor: float = 0.05):
        self.policy, self.noise_clip, self.std_floor = policy, noise_clip, std_floor
        self.time_mask = executed_mask(policy.spec) if executed_only else None
        policy.encoder.requires_grad_(False)

    def parameters(self) -> list[nn.Parameter]:
        return [p for p in self.policy.parameters() if p.requires_grad]

    def set_std(self, std: float) -> None:
        """Start exploring at ``std`` (normalised units, every chunk entry); PPO then learns the log-std from there."""
        cfg = self.policy.config
        if not math.exp(cfg.log_std_min) <= std <= math.exp(cfg.log_std_max) or std < self.std_floor:
            raise ValueError(f"exploration std {std} is outside the policy's range "
                             f"[{max(math.exp(cfg.log_std_min), self.std_floor):.3g}, {math.exp(cfg.log_std_max):.3g}]")
        with torch.no_grad():
            self.policy.log_std.fill_(math.log(std))

    def diagnostics(self) -> dict[str, float]:
        """Logged per iteration: the exploration std PPO has learned (mean over the chunk, normalised units)."""
        cfg = self.policy.config
        with torch.no_grad():  # the policy's std is state-independent: the same clamp distribution() applies
            std = self.policy.log_std.clamp(cfg.log_std_min, cfg.log_std_max).exp().clamp(min=self.std_floor)
        return {"gaussian/std_mean": float(std.mean())}

    def _dist(self, obs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        mean, std = self.policy.distribution(obs, augment=False)
        return mean, std.clamp(min=self.std_floor)  # exploration never collapses to a point

    def act(self, obs: dict[str, Any], generator: torch.Generator | None = None
            ) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            mean, std = self._dist(obs)
            x = mean + std * clipped_noise(mean.shape, generator, self.noise_clip, mean.device)
            logp = masked_logprob(x, mean, std, self.time_mask)[:, None]
            actions = self.policy.unnormalize_action(x.clamp(-1.0, 1.0))
        return actions.cpu().numpy(), x, logp

    def logprob(self, obs: dict[str, Any], record: torch.Tensor) -> torch.Tensor:
        mean, std = self._dist(obs)
        return masked_logprob(record, mean, std, self.time_mask)[:, None]


# --- value -------------------------------------------------------------------------------------------------------
class ValueNet(nn.Module):
    """V(observation history): an MLP on the normalised low-dim observations (DPPO: the value sees env state only)."""

    def __init__(self, policy: Any, hidden: tuple[int, ...] = (256, 256)):
        super().__init__()
        spec = policy.spec
        images = [k for k in spec.obs_keys if k.endswith(("_rgb", "_depth"))]
        if images:
            raise ValueError(f"online PPO's value net takes low-dim observations only, the policy uses {images}; "
                             f"train a low-dim policy for online refinement (image PPO is a GPU-box job)")
        self.policy = (policy,)  # a tuple keeps the policy out of this module's parameters and state_dict
        n_in = sum(spec.n_obs * math.prod(shape) for shape, _ in spec.obs_keys.values())
        layers: list[nn.Module] = []
        for width in hidden:
            layers += [nn.Linear(n_in, width), nn.Tanh()]
            n_in = width
        layers.append(nn.Linear(n_in, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, obs: dict[str, Any]) -> torch.Tensor:
        policy = self.policy[0]
        normed = policy.normalize_obs(obs)
        flat = torch.cat([normed[k].flatten(1) for k in sorted(normed)], dim=1)
        return self.net(flat.to(next(self.net.parameters()).device)).squeeze(-1)


# --- rollout -----------------------------------------------------------------------------------------------------
@dataclass
class Rollout:
    """One iteration's data, (L, N, ...) = (chunks per env, envs, ...)."""

    obs: dict[str, np.ndarray]  # observation histories the chunks were sampled from, (L, N, n_obs, ...)
    next_obs: dict[str, np.ndarray]  # history to bootstrap from: the next decision's, or the final one at an end
    record: torch.Tensor  # (L, N, ...) what logprob() needs (the chain, or the sample)
    logp: torch.Tensor  # (L, N, K) log-probs at sampling time
    rewards: torch.Tensor  # (L, N) discounted reward of the executed steps
    terminal: torch.Tensor  # (L, N) the task ended (success): no bootstrap
    episode_end: torch.Tensor  # (L, N) terminal or truncated: the GAE recursion is cut
    env_steps: int  # env steps this rollout took (all envs, holds included)
    env_seconds: float  # wall time spent inside venv.step (simulation, resets included): the throughput baseline
    episodes: list[tuple[bool, int]]  # (success, length) of every episode that finished


class RolloutState:
    """Per-env observation histories carried across iterations (episodes continue between updates)."""

    def __init__(self, venv: Any, obs_keys: list[str], n_obs: int, seed: int):
        self.venv, self.keys, self.n_obs = venv, obs_keys, n_obs
        obs, _ = venv.reset(seed=seed)
        self.hist = {k: np.repeat(np.asarray(obs[k])[:, None], n_obs, axis=1) for k in obs_keys}
        self.lengths = np.zeros(venv.num_envs, int)

    def push(self, obs: dict[str, Any], envs: np.ndarray) -> None:
        for k in self.keys:
            h = self.hist[k]
            h[envs, :-1] = h[envs, 1:]
            h[envs, -1] = np.asarray(obs[k])[envs]

    def restart(self, obs: dict[str, Any], envs: np.ndarray) -> None:
        """A new episode has no past: fill its history with the first observation (the runner's padding)."""
        for k in self.keys:
            self.hist[k][envs] = np.asarray(obs[k])[envs][:, None]
        self.lengths[envs] = 0

    def snapshot(self) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self.hist.items()}


def _finished_success(info: dict[str, Any], n: int) -> np.ndarray:
    final = info.get("final_info")
    if isinstance(final, dict) and "success" in final:
        return np.asarray(final["success"], bool) & np.asarray(info.get("_final_info", np.zeros(n, bool)), bool)
    return np.asarray(info.get("success", np.zeros(n, bool)), bool)


def collect_rollout(state: RolloutState, actor: Any, chunks: int, gamma: float, n_exec: int,
                    generator: torch.Generator | None) -> Rollout:
    venv, n = state.venv, state.venv.num_envs
    start = actor.policy.spec.n_obs - 1
    obs_buf, next_buf = [], []
    records, logps = [], []
    rewards = np.zeros((chunks, n), np.float32)
    terminal, ended_buf = np.zeros((chunks, n), bool), np.zeros((chunks, n), bool)
    steps, episodes, env_seconds = 0, [], 0.0
    for t in range(chunks):
        obs_in = state.snapshot()
        actions, record, logp = actor.act(obs_in, generator)
        obs_buf.append(obs_in)
        records.append(record.cpu())
        logps.append(logp.cpu())
        executed = actions[:, start:start + n_exec].astype(np.float32)
        ended = np.zeros(n, bool)
        final_hist = state.snapshot()
        for j in range(n_exec):
            step_actions = np.where(ended[:, None], HOLD_ACTION[None, :executed.shape[-1]], executed[:, j])
            tick = time.perf_counter()
            obs, reward, term, trunc, info = venv.step(step_actions)
            env_seconds += time.perf_counter() - tick
            steps += n
            live = ~ended
            rewards[t] += live * (gamma ** j) * np.asarray(reward, np.float32)
            done = np.asarray(term, bool) | np.asarray(trunc, bool)
            state.lengths += 1
            finishing = live & done
            if finishing.any():
                success = _finished_success(info, n)
                final_obs = info["final_obs"]
                for i in np.flatnonzero(finishing):
                    episodes.append((bool(success[i]), int(state.lengths[i])))
                    for k in state.keys:  # the finished episode's last history, for the truncation bootstrap
                        final_hist[k][i, :-1] = state.hist[k][i, 1:]
                        final_hist[k][i, -1] = final_obs[i][k]
                terminal[t] |= finishing & np.asarray(term, bool)
                ended |= finishing
            continuing = ~done
            state.push(obs, continuing)
            state.restart(obs, done)  # SAME_STEP autoreset: obs is already the next episode's first
        ended_buf[t] = ended
        nxt = state.snapshot()
        for k in state.keys:
            nxt[k][ended] = final_hist[k][ended]
        next_buf.append(nxt)
    stack = lambda bufs: {k: np.stack([b[k] for b in bufs]) for k in state.keys}  # noqa: E731
    return Rollout(stack(obs_buf), stack(next_buf), torch.stack(records), torch.stack(logps),
                   torch.as_tensor(rewards), torch.as_tensor(terminal), torch.as_tensor(ended_buf), steps, env_seconds, episodes)


# --- update ------------------------------------------------------------------------------------------------------
def flat_observations(obs: dict[str, np.ndarray], idx: np.ndarray | None = None) -> dict[str, np.ndarray]:
    out = {k: v.reshape(-1, *v.shape[2:]) for k, v in obs.items()}
    return out if idx is None else {k: v[idx] for k, v in out.items()}


@torch.no_grad()
def values_of(value: ValueNet, obs: dict[str, np.ndarray], batch: int = 4096) -> torch.Tensor:
    """V over an (L, N, ...) observation buffer -> (L, N)."""
    flat = flat_observations(obs)
    total = next(iter(flat.values())).shape[0]
    out = torch.cat([value({k: v[i:i + batch] for k, v in flat.items()}).cpu() for i in range(0, total, batch)])
    shape = next(iter(obs.values())).shape[:2]
    return out.reshape(shape)


def advantages_of(rollout: Rollout, value: ValueNet, gamma: float, n_exec: int, lam: float
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(advantages, returns, values) (L, N) by GAE per env with the chunk discount gamma^n_exec."""
    v = values_of(value, rollout.obs)
    v_next = values_of(value, rollout.next_obs)
    adv, ret = chunk_gae(rollout.rewards, v, v_next, rollout.terminal, rollout.episode_end, gamma ** n_exec, lam)
    return adv, ret, v


@dataclass
class UpdateStats:
    approx_kl: float  # mean approx-KL over the minibatches that ran
    clip_frac: float  # mean clip fraction
    value_loss: float  # mean value loss
    explained_variance: float  # 1 - Var(returns - V) / Var(returns), before the update
    minibatches: int  # optimiser steps taken
    stopped_early: bool  # target-KL stopped the iteration
    ratio_quantiles: list[list[float]]  # per denoising step: 5%, 50%, 95% of pi_new/pi_old after the update
    first_ratio_max_dev: float  # max |ratio - 1| over the first minibatch (0 up to rounding: a correctness check)


def explained_variance(pred: torch.Tensor, target: torch.Tensor) -> float:
    var = float(target.var())
    return float("nan") if var == 0 else 1.0 - float((target - pred).var()) / var


def ppo_update(actor: Any, value: ValueNet, rollout: Rollout, adv: torch.Tensor, ret: torch.Tensor,
               v_old: torch.Tensor, optimizer: torch.optim.Optimizer, config: PPOConfig, epochs: int,
               minibatch: int, vf_coef: float, policy_update: bool, progress: float,
               generator: np.random.Generator,
               aux_loss: Callable[[dict[str, np.ndarray]], torch.Tensor] | None = None) -> UpdateStats:
    """Minibatch PPO epochs; with ``policy_update`` False only the value net learns (warm-up). ``aux_loss(obs)``
    (a behaviour-cloning anchor, or the noise policy's prior KL on the minibatch's observations) is added to every
    policy minibatch's loss."""
    flat_obs = flat_observations(rollout.obs)
    record = rollout.record.flatten(0, 1)
    logp_old = rollout.logp.flatten(0, 1)
    adv_f, ret_f, v_old_f = adv.flatten(), ret.flatten(), v_old.flatten()
    total = adv_f.shape[0]
    device = actor.policy.device
    kls, clips, vlosses, first_dev, stopped, steps = [], [], [], float("nan"), False, 0
    params = [*actor.parameters(), *value.parameters()]
    for _ in range(epochs):
        order = generator.permutation(total)
        for lo in range(0, total, minibatch):
            idx = order[lo:lo + minibatch]
            if len(idx) < 2:
                continue
            obs = {k: v[idx] for k, v in flat_obs.items()}
            rec = record[idx].to(device)

            def value_loss() -> torch.Tensor:
                return vf_coef * clipped_value_loss(value(obs), v_old_f[idx].to(device), ret_f[idx].to(device),
                                                    config.value_clip)

            if policy_update:
                extra = value_loss if aux_loss is None else (lambda: value_loss() + aux_loss(obs))  # noqa: E731
                result = ppo_step(optimizer, params, lambda: actor.logprob(obs, rec), logp_old[idx].to(device),
                                  adv_f[idx].to(device), config, progress, extra_loss=extra)
                if steps == 0:
                    first_dev = max(abs(float(result.stats["ratio_min"].min()) - 1),
                                    abs(float(result.stats["ratio_max"].max()) - 1))
                if result.stopped_early:
                    stopped = True
                    break
                kls.append(float(result.stats["approx_kl_mean"]))
                clips.append(float(result.stats["clip_frac_mean"]))
            else:
                loss = value_loss()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(list(value.parameters()), config.max_grad_norm)
                optimizer.step()
            with torch.no_grad():
                vlosses.append(float(clipped_value_loss(value(obs), v_old_f[idx].to(device), ret_f[idx].to(device),
                                                        config.value_clip)))
            steps += 1
        if stopped:
            break
    quantiles = _ratio_quantiles(actor, flat_obs, record, logp_old, generator) if policy_update else []
    return UpdateStats(float(np.mean(kls)) if kls else 0.0, float(np.mean(clips)) if clips else 0.0,
                       float(np.mean(vlosses)) if vlosses else float("nan"), explained_variance(v_old_f, ret_f),
                       steps, stopped, quantiles, first_dev)


@torch.no_grad()
def _ratio_quantiles(actor: Any, obs: dict[str, np.ndarray], record: torch.Tensor, logp_old: torch.Tensor,
                     generator: np.random.Generator, sample: int = 512) -> list[list[float]]:
    """Per denoising step, the 5/50/95% quantiles of pi_new/pi_old over (a sample of) the batch after the update."""
    idx = generator.permutation(record.shape[0])[:sample]
    new = actor.logprob({k: v[idx] for k, v in obs.items()}, record[idx].to(actor.policy.device)).cpu()
    ratio = (new - logp_old[idx]).exp()
    q = torch.quantile(ratio, torch.tensor([0.05, 0.5, 0.95]), dim=0)  # (3, K)
    return q.T.tolist()

