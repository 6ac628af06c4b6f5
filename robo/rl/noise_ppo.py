"""Steering in noise space (DSRL's idea): a small Gaussian policy chooses the initial noise x_K that a frozen one-step
student (or a frozen DDIM teacher) maps to an action chunk; PPO (robo/rl/online.py, the same trainer as chain PPO)
trains only the noise policy. The deployed policy itself never changes, so no new distillation is needed.

At initialisation the noise policy is exactly the base policy's own noise distribution (mean 0, std 1), so the
steered policy starts as the base policy. The mean is squashed to +-``mean_bound`` (an unbounded mean would drive
the frozen network far outside the noise it was trained on). Log-probs are over the whole (T, A) noise: every noise
entry shapes the executed actions through the network, so none is masked. K = 1.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from robo.rl.online import _clipped_noise, masked_logprob


@dataclass
class NoisePolicyConfig:
    hidden: tuple[int, ...] = (256, 256)  # MLP widths of the noise policy
    init_log_std: float = 0.0  # log-std of the chosen noise at the start (0: the base policy's N(0, I))
    log_std_min: float = -3.0  # floor on the log-std: exploration never stops
    mean_bound: float = 2.5  # |mean| <= this (tanh squash), keeps x_K inside what the base network has seen
    noise_clip: float = 3.0  # clip exploration draws at this many std


class NoiseActor(nn.Module):
    """The trainer's actor: ``policy`` is the frozen base (its spec and normaliser are the trainer's)."""

    num_logp_steps = 1

    def __init__(self, base: Any, config: NoisePolicyConfig | None = None):
        super().__init__()
        self.config = config or NoisePolicyConfig()
        if base.kind not in ("consistency", "diffusion"):
            raise ValueError(f"noise-space PPO steers a consistency or diffusion policy, not a {base.kind} policy")
        images = [k for k in base.spec.obs_keys if k.endswith(("_rgb", "_depth"))]
        if images:
            raise ValueError(f"noise-space PPO takes low-dim observations only; the base policy uses {images}")
        base.requires_grad_(False)
        base.eval()
        self._base = (base,)  # a tuple keeps the frozen base out of parameters() and state_dict()
        spec = base.spec
        self.shape = (spec.horizon, spec.action_dim)
        n_in = sum(spec.n_obs * math.prod(shape) for shape, _ in spec.obs_keys.values())
        layers: list[nn.Module] = []
        for width in self.config.hidden:
            layers += [nn.Linear(n_in, width), nn.Tanh()]
            n_in = width
        head = nn.Linear(n_in, math.prod(self.shape))
        nn.init.zeros_(head.weight)  # mean 0 at the start: the steered policy begins as the base policy
        nn.init.zeros_(head.bias)
        self.net = nn.Sequential(*layers, head)
        self.log_std = nn.Parameter(torch.full(self.shape, float(self.config.init_log_std)))
        self.to(base.device)

    @property
    def policy(self) -> Any:
        return self._base[0]

    def _dist(self, obs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        normed = self.policy.normalize_obs(obs)
        flat = torch.cat([normed[k].flatten(1) for k in sorted(normed)], dim=1)
        mean = self.config.mean_bound * torch.tanh(self.net(flat) / self.config.mean_bound)
        std = self.log_std.clamp(min=self.config.log_std_min).exp()
        return mean.reshape(-1, *self.shape), std

    @torch.no_grad()
    def decode(self, obs: dict[str, Any], noise: torch.Tensor) -> torch.Tensor:
        """The frozen base policy's chunk (unnormalised) from the given initial noise."""
        base = self.policy
        if base.kind == "diffusion":
            clean = base.ddim_sample_normalized(noise, base.conditioned(obs), eta=0.0)
        elif base.config.mode == "distilled":
            _, cond = base.conditioned(obs, augment=False)
            clean = base.consistency_fn(noise, base.ddim_timesteps[0].expand(noise.shape[0]), cond)
        else:  # ct: noise at the top level sigma_max
            _, cond = base.conditioned(obs, augment=False)
            level = base.sigmas[-1]
            clean = base.consistency_fn(noise * level, level.expand(noise.shape[0]), cond)
        return base.unnormalize_action(clean.clamp(-1.0, 1.0))

    def act(self, obs: dict[str, Any], generator: torch.Generator | None = None
            ) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            mean, std = self._dist(obs)
            z = mean + std * _clipped_noise(mean.shape, generator, self.config.noise_clip, mean.device)
            logp = masked_logprob(z, mean, std, None)[:, None]
            actions = self.decode(obs, z)
        return actions.cpu().numpy(), z, logp

    def logprob(self, obs: dict[str, Any], record: torch.Tensor) -> torch.Tensor:
        mean, std = self._dist(obs)
        return masked_logprob(record, mean, std, None)[:, None]

    def shipped(self) -> SteeredPolicy:
        return SteeredPolicy(self)


class SteeredPolicy:
    """What is evaluated: the base policy fed noise drawn from the noise policy, behind the policy interface
    ``robo.evaluate`` and the runner use (``spec``, ``predict``). It samples, as the base policy does with
    N(0, I): feeding the mean would feed an all-zero x_K at the start, which the base network never saw (measured on
    Lift: 0/10 where sampling gives the base policy's own success)."""

    kind = "noise_steered"

    def __init__(self, actor: NoiseActor):
        self.actor = actor
        self.spec, self.normalizer = actor.policy.spec, actor.policy.normalizer
        self.extra = getattr(actor.policy, "extra", {})

    def eval(self) -> SteeredPolicy:
        return self

    @torch.no_grad()
    def predict(self, obs: dict[str, Any], generator: torch.Generator | None = None, **_: Any) -> torch.Tensor:
        mean, std = self.actor._dist(obs)
        z = mean + std * _clipped_noise(mean.shape, generator, self.actor.config.noise_clip, mean.device)
        return self.actor.decode(obs, z)


def save_noise_policy(path: Path, actor: NoiseActor, base_checkpoint: str) -> None:
    """``noise_policy.safetensors`` + ``noise_policy.json`` (config and the base checkpoint it steers)."""
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in actor.state_dict().items()},
              str(path / "noise_policy.safetensors"))
    (path / "noise_policy.json").write_text(json.dumps({"config": asdict(actor.config),
                                                        "base_checkpoint": base_checkpoint}, indent=2))


def load_noise_policy(path: Path, device: str = "cpu") -> NoiseActor:
    from policies.checkpoint import load_checkpoint
    from safetensors.torch import load_file

    meta = json.loads((path / "noise_policy.json").read_text())
    config = NoisePolicyConfig(**{**meta["config"], "hidden": tuple(meta["config"]["hidden"])})
    actor = NoiseActor(load_checkpoint(meta["base_checkpoint"], device=device), config)
    actor.load_state_dict(load_file(str(path / "noise_policy.safetensors")))
    return actor
