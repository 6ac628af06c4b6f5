"""The clipped-surrogate PPO core, shared by offline PPO (robo/rl/offline.py) and online PPO.

A denoising policy is a K-step chain of Gaussian policies (policies/diffusion.py): for one chunk it gives
``step_logprobs`` of shape (B, K), each the log-density of one denoising transition summed over horizon and action
dims. A Gaussian policy is the K = 1 case. Everything here takes log-probs shaped (B, K) (a (B,) tensor is treated
as K = 1) and advantages shaped (B,): the same advantage drives every denoising step (RL-100, DPPO).

Per step k: r_k = exp(logp_new_k - logp_old_k); loss = -mean_{b,k in trainable} min(r A, clip(r, 1-eps, 1+eps) A).
The mean runs over the trainable steps only (``trainable_mask``), so freezing early steps does not rescale the
gradient of the late ones.

Diagnostics (CleanRL's set, per denoising step): ratio mean/std/min/max, clip fraction and approx-KL
((r - 1) - log r, always >= 0). The low-noise last steps are where ratios spread first, so per-step numbers are
what tells whether a std floor is too small.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch


@dataclass
class PPOConfig:
    clip_eps: float = 0.25  # clip range at the start (RL-100 offline: 0.25; online PPO: 0.2)
    clip_eps_final: float | None = None  # clip range at the end of training (linear decay); None = constant
    trainable_last_k: int = 0  # only the last K' denoising steps enter the loss (0 = all steps)
    max_grad_norm: float = 1.0  # global gradient-norm clip (0 = off)
    target_kl: float = 0.0  # stop the epoch's remaining minibatches once mean approx-KL exceeds this (0 = off)
    normalize_advantages: bool = True  # standardise advantages per minibatch (mean 0, std 1)
    value_clip: float = 0.0  # online PPO: clip the value prediction's change to +-this (0 = unclipped loss)


def clip_at(config: PPOConfig, progress: float) -> float:
    """The clip range at ``progress`` in [0, 1] of training: linear from clip_eps to clip_eps_final."""
    if config.clip_eps_final is None:
        return config.clip_eps
    p = min(max(progress, 0.0), 1.0)
    return (1.0 - p) * config.clip_eps + p * config.clip_eps_final  # exact at both ends


def trainable_mask(num_steps: int, last_k: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(K,) bool mask of the denoising steps whose ratios enter the loss: the last ``last_k`` (all when 0)."""
    if last_k < 0 or last_k > num_steps:
        raise ValueError(f"trainable_last_k must be in [0, {num_steps}] (the number of denoising steps), got {last_k}")
    mask = torch.ones(num_steps, dtype=torch.bool, device=device)
    if last_k:
        mask[: num_steps - last_k] = False
    return mask


def normalize(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Batch-standardise (mean 0, std 1); a single sample or a constant batch only loses its mean."""
    if x.numel() < 2:
        return x - x.mean()
    return (x - x.mean()) / (x.std() + eps)


def _as_steps(logp: torch.Tensor) -> torch.Tensor:
    return logp.unsqueeze(1) if logp.ndim == 1 else logp


def clipped_surrogate(logp_new: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor, clip_eps: float,
                      mask: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate loss over (B, K) step log-probs with one advantage per sample (B,).

    Returns (loss, stats). ``stats`` holds detached per-step tensors of shape (K,): ``ratio_mean``, ``ratio_std``,
    ``ratio_min``, ``ratio_max``, ``clip_frac``, ``approx_kl``; and scalars ``loss``, ``approx_kl_mean``,
    ``clip_frac_mean`` over the trainable steps.
    """
    logp_new, logp_old = _as_steps(logp_new), _as_steps(logp_old.detach())
    if logp_new.shape != logp_old.shape:
        raise ValueError(f"new and old log-probs differ in shape: {tuple(logp_new.shape)} vs {tuple(logp_old.shape)}")
    if advantages.shape != logp_new.shape[:1]:
        raise ValueError(f"need one advantage per sample ({logp_new.shape[0]}), got shape {tuple(advantages.shape)}")
    k = logp_new.shape[1]
    mask = torch.ones(k, dtype=torch.bool, device=logp_new.device) if mask is None else mask.to(logp_new.device)
    log_ratio = logp_new - logp_old
    ratio = log_ratio.exp()
    adv = advantages.detach()[:, None]
    unclipped = ratio * adv
    clipped = ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps) * adv
    per = -torch.minimum(unclipped, clipped)  # (B, K)
    loss = per[:, mask].mean()
    with torch.no_grad():
        r = ratio.detach()
        kl = (r - 1.0) - log_ratio.detach()
        clip_frac = ((r - 1.0).abs() > clip_eps).float()
        stats = {
            "ratio_mean": r.mean(0), "ratio_std": r.std(0) if r.shape[0] > 1 else torch.zeros(k),
            "ratio_min": r.min(0).values, "ratio_max": r.max(0).values,
            "clip_frac": clip_frac.mean(0), "approx_kl": kl.mean(0),
            "loss": loss.detach(), "approx_kl_mean": kl[:, mask].mean(), "clip_frac_mean": clip_frac[:, mask].mean(),
        }
    return loss, stats


def clipped_value_loss(value: torch.Tensor, value_old: torch.Tensor, returns: torch.Tensor,
                       clip: float = 0.0) -> torch.Tensor:
    """0.5 * squared error; with ``clip`` > 0 PPO's pessimistic clipped variant (the value may move +-clip)."""
    loss = (value - returns) ** 2
    if clip > 0:
        moved = value_old + (value - value_old).clamp(-clip, clip)
        loss = torch.maximum(loss, (moved - returns) ** 2)
    return 0.5 * loss.mean()


def chunk_gae(rewards: torch.Tensor, values: torch.Tensor, next_values: torch.Tensor, terminal: torch.Tensor,
              episode_end: torch.Tensor, gamma_chunk: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over a (T, N) buffer of action-chunk transitions.

    ``gamma_chunk`` is the per-chunk discount (gamma ** n_executed). ``terminal`` stops bootstrapping (the task
    ended); ``episode_end`` (terminal or truncated) cuts the GAE recursion but still bootstraps from
    ``next_values`` when only truncated, which must then hold V(s') of the final observation.
    Returns (advantages, returns), both (T, N).
    """
    T = rewards.shape[0]
    adv = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    not_terminal, not_end = 1.0 - terminal.float(), 1.0 - episode_end.float()
    for t in reversed(range(T)):
        delta = rewards[t] + gamma_chunk * not_terminal[t] * next_values[t] - values[t]
        running = delta + gamma_chunk * lam * not_end[t] * running
        adv[t] = running
    return adv, adv + values


@dataclass
class PPOStepResult:
    """What one optimiser step reports: the surrogate's stats plus the gradient norm before clipping."""

    stats: dict[str, torch.Tensor]
    grad_norm: float
    stopped_early: bool = False  # approx-KL passed target_kl: the step was NOT applied


def ppo_step(optimizer: torch.optim.Optimizer, params: Iterable[torch.nn.Parameter],
             logp_fn: Callable[[], torch.Tensor], logp_old: torch.Tensor, advantages: torch.Tensor,
             config: PPOConfig, progress: float, extra_loss: Callable[[], torch.Tensor] | None = None,
             mask: torch.Tensor | None = None) -> PPOStepResult:
    """One clipped-surrogate optimiser step on one minibatch.

    ``logp_fn()`` recomputes the (B, K) log-probs of the stored actions/chains under the current weights
    (differentiable); ``logp_old`` are the ones recorded when they were sampled. ``extra_loss()`` (optional) is
    added to the surrogate, e.g. a value loss or a diversity term. With ``target_kl`` > 0 the step is skipped when
    the KL before it already exceeds the target.
    """
    params = [p for p in params if p.requires_grad]
    adv = normalize(advantages) if config.normalize_advantages else advantages
    logp_new = logp_fn()
    if mask is None and config.trainable_last_k:
        mask = trainable_mask(_as_steps(logp_new).shape[1], config.trainable_last_k, logp_new.device)
    loss, stats = clipped_surrogate(logp_new, logp_old, adv, clip_at(config, progress), mask)
    if config.target_kl > 0 and float(stats["approx_kl_mean"]) > config.target_kl:
        return PPOStepResult(stats, 0.0, stopped_early=True)
    if extra_loss is not None:
        loss = loss + extra_loss()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if config.max_grad_norm > 0:
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm))
    else:
        grad_norm = float(torch.sqrt(sum((p.grad.detach() ** 2).sum() for p in params if p.grad is not None)))
    optimizer.step()
    return PPOStepResult(stats, grad_norm)


def summarize_steps(stats: dict[str, torch.Tensor]) -> dict[str, list[float] | float]:
    """JSON/TensorBoard-friendly copy of ``clipped_surrogate``'s stats (per-step tensors become lists)."""
    return {k: (v.tolist() if v.ndim else float(v)) for k, v in stats.items()}
