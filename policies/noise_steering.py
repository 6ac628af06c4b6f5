"""Noise steering at inference: a small Gaussian policy chooses the initial noise x_K that a frozen one-step student
(or DDIM teacher) maps to an action chunk (DSRL's idea). Training lives in ``robo/rl/noise_ppo.py``; this module is
what runs it, so a deploy artifact can carry a steered policy and the robot side needs only ``policies``.

The steering net sees the normalised observation history of the base policy (low-dim keys only). Its mean is
squashed to +-``mean_bound`` and its std floored at exp(``log_std_min``); draws are clipped at ``noise_clip`` std.
At initialisation the mean is 0 and the std 1: the steered policy is exactly the base policy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

IMAGE_SUFFIXES = ("_rgb", "_depth")


@dataclass
class NoisePolicyConfig:
    hidden: tuple[int, ...] = (256, 256)  # MLP widths of the noise policy
    init_log_std: float = 0.0  # log-std of the chosen noise at the start (0: the base policy's N(0, I))
    log_std_min: float = -3.0  # floor on the log-std: exploration never stops
    mean_bound: float = 2.5  # |mean| <= this (tanh squash), keeps x_K inside what the base network has seen
    noise_clip: float = 3.0  # clip exploration draws at this many std

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> NoisePolicyConfig:
        return cls(**{**raw, "hidden": tuple(raw.get("hidden", cls.hidden))})


def clipped_noise(shape: tuple[int, ...], generator: torch.Generator | None, clip: float,
                  device: torch.device | str) -> torch.Tensor:
    """Standard normal draws clipped at +-``clip`` (0: unclipped), drawn on the generator's device, moved to
    ``device``. Online PPO's exploration noise is drawn the same way."""
    z = torch.randn(shape, generator=generator, device=generator.device if generator else device).to(device)
    return z.clamp(-clip, clip) if clip > 0 else z


class NoiseSteering(nn.Module):
    """The noise policy's network: observation history -> (mean, std) of x_K over the base policy's (T, A) chunk."""

    def __init__(self, base: Any, config: NoisePolicyConfig | None = None):
        super().__init__()
        self.config = config or NoisePolicyConfig()
        if base.kind not in ("consistency", "diffusion"):
            raise ValueError(f"noise steering drives a consistency or diffusion policy, not a {base.kind} policy")
        images = [k for k in base.spec.obs_keys if k.endswith(IMAGE_SUFFIXES)]
        if images:
            raise ValueError(f"noise steering takes low-dim observations only; the base policy uses {images}")
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

    def dist(self, base: Any, obs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        normed = base.normalize_obs(obs)
        flat = torch.cat([normed[k].flatten(1) for k in sorted(normed)], dim=1)
        mean = self.config.mean_bound * torch.tanh(self.net(flat) / self.config.mean_bound)
        std = self.log_std.clamp(min=self.config.log_std_min).exp()
        return mean.reshape(-1, *self.shape), std


def decode_settings(base: Any) -> dict[str, Any]:
    """The base's inference settings that shape ``decode``. A steering net learns noise for one map, so the map's
    settings are saved with the net and a base whose config.json has since changed them is refused on load."""
    if base.kind == "diffusion":
        return {"num_inference_steps": base.config.num_inference_steps, "eta": base.config.eta}
    return {}  # a consistency base decodes with its top-level call alone, whatever inference_steps says


@torch.no_grad()
def decode(base: Any, obs: dict[str, Any], noise: torch.Tensor) -> torch.Tensor:
    """The frozen base policy's chunk (unnormalised) from the given initial noise."""
    if base.kind == "diffusion":
        clean = base.noise_to_chunk_normalized(noise, base.conditioned(obs))
    elif base.config.mode == "distilled":
        _, cond = base.conditioned(obs, augment=False)
        clean = base.consistency_fn(noise, base.ddim_timesteps[0].expand(noise.shape[0]), cond)
    else:  # ct: noise at the top level sigma_max
        _, cond = base.conditioned(obs, augment=False)
        level = base.sigmas[-1]
        clean = base.consistency_fn(noise * level, level.expand(noise.shape[0]), cond)
    return base.unnormalize_action(clean.clamp(-1.0, 1.0))


class SteeredPolicy:
    """What is evaluated and shipped: the base policy fed noise drawn from the steering net, behind the policy
    interface ``robo.evaluate``, the runner and the ROS node use (``kind``, ``spec``, ``normalizer``, ``predict``).
    It samples, as the base policy does with N(0, I): feeding the mean would feed an all-zero x_K at the start,
    which the base network never saw (measured on Lift: 0/10 where sampling gives the base policy's own success)."""

    kind = "noise_steered"

    def __init__(self, base: Any, steering: NoiseSteering):
        self.base, self.steering = base, steering
        self.spec, self.normalizer = base.spec, base.normalizer
        self.extra = getattr(base, "extra", {})

    def eval(self) -> SteeredPolicy:
        self.base.eval()
        self.steering.eval()
        return self

    @torch.no_grad()
    def predict(self, obs: dict[str, Any], generator: torch.Generator | None = None, **_: Any) -> torch.Tensor:
        mean, std = self.steering.dist(self.base, obs)
        z = mean + std * clipped_noise(mean.shape, generator, self.steering.config.noise_clip, mean.device)
        return decode(self.base, obs, z)
