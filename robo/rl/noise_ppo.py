"""Steering in noise space (DSRL's idea): a small Gaussian policy chooses the initial noise x_K that a frozen one-step
student (or a frozen DDIM teacher) maps to an action chunk; PPO (robo/rl/online.py, the same trainer as chain PPO)
trains only the noise policy. The deployed policy itself never changes, so no new distillation is needed. The
network and the steered policy that runs it are ``policies/noise_steering.py`` (a deploy artifact can carry them);
this module adds what training needs: sampling with log-probs, re-scoring, and saving a run.

At initialisation the noise policy is exactly the base policy's own noise distribution (mean 0, std 1), so the
steered policy starts as the base policy. The mean is squashed to +-``mean_bound`` (an unbounded mean would drive
the frozen network far outside the noise it was trained on). Log-probs are over the whole (T, A) noise: every noise
entry shapes the executed actions through the network, so none is masked. K = 1.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from policies.noise_steering import (NoisePolicyConfig, NoiseSteering, SteeredPolicy, clipped_noise, decode,
                                     decode_settings)
from robo.rl.online import masked_logprob

__all__ = ["NoiseActor", "NoisePolicyConfig", "load_noise_policy", "read_noise_policy", "save_noise_policy"]

META_FILE, WEIGHTS_FILE = "noise_policy.json", "noise_policy.safetensors"


class NoiseActor(NoiseSteering):
    """The trainer's actor: the steering net (its parameters are all that train) around the frozen base, which
    is ``policy`` (its spec and normaliser are the trainer's)."""

    num_logp_steps = 1

    def __init__(self, base: Any, config: NoisePolicyConfig | None = None):
        super().__init__(base, config)
        base.requires_grad_(False)
        base.eval()
        self._base = (base,)  # a tuple keeps the frozen base out of parameters() and state_dict()
        self.to(base.device)

    @property
    def policy(self) -> Any:
        return self._base[0]

    def _dist(self, obs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.dist(self.policy, obs)

    def decode(self, obs: dict[str, Any], noise: torch.Tensor) -> torch.Tensor:
        return decode(self.policy, obs, noise)

    def act(self, obs: dict[str, Any], generator: torch.Generator | None = None
            ) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            mean, std = self._dist(obs)
            z = mean + std * clipped_noise(mean.shape, generator, self.config.noise_clip, mean.device)
            logp = masked_logprob(z, mean, std, None)[:, None]
            actions = self.decode(obs, z)
        return actions.cpu().numpy(), z, logp

    def logprob(self, obs: dict[str, Any], record: torch.Tensor) -> torch.Tensor:
        mean, std = self._dist(obs)
        return masked_logprob(record, mean, std, None)[:, None]

    def prior_kl(self, obs: dict[str, Any]) -> torch.Tensor:
        """KL(steering(obs) || N(0, I)) per noise dimension, averaged over dimensions and the batch: how far the
        chosen noise has moved from the base policy's own. PPO's per-iteration KL stays small while this one
        compounds; the prior anchor (``noise_prior_coef``) keeps it bounded."""
        mean, std = self._dist(obs)
        var = std.square().expand_as(mean)
        return (0.5 * (var + mean.square() - 1.0) - torch.log(std).expand_as(mean)).mean()

    def shipped(self) -> SteeredPolicy:
        return SteeredPolicy(self.policy, self)


def save_noise_policy(path: Path, actor: NoiseActor, base_checkpoint: str,
                      extra: dict[str, Any] | None = None) -> None:
    """``noise_policy.safetensors`` + ``noise_policy.json`` (config, the base checkpoint it steers, and ``extra``:
    what the run measured, for the export's provenance)."""
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in actor.state_dict().items()}, str(path / WEIGHTS_FILE))
    (path / META_FILE).write_text(json.dumps({"config": asdict(actor.config), "base_checkpoint": base_checkpoint,
                                              "base_decode": decode_settings(actor.policy), "extra": extra or {}},
                                             indent=2))


def read_noise_policy(path: Path) -> dict[str, Any] | None:
    """The run's ``noise_policy.json``, or None when ``path`` holds no noise policy."""
    meta = Path(path) / META_FILE
    return json.loads(meta.read_text()) if meta.is_file() else None


def load_noise_policy(path: Path, device: str = "cpu") -> NoiseActor:
    from policies.checkpoint import load_checkpoint
    from safetensors.torch import load_file

    meta = read_noise_policy(path)
    if meta is None:
        raise FileNotFoundError(f"{path} holds no {META_FILE}: pass the ppo/best of a --method noise run")
    base = load_checkpoint(meta["base_checkpoint"], device=device)
    trained_with, now = meta.get("base_decode"), decode_settings(base)  # runs saved before the record: unchecked
    if trained_with is not None and trained_with != now:
        raise ValueError(f"{path}: the steering net was trained on the base decoding with {trained_with}, but "
                         f"{meta['base_checkpoint']}/config.json now sets {now}; restore those settings there")
    actor = NoiseActor(base, NoisePolicyConfig.from_json(meta["config"]))
    actor.load_state_dict(load_file(str(Path(path) / WEIGHTS_FILE)))
    return actor
