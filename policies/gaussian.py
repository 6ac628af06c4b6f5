"""Gaussian policy over the whole action chunk: MLP mean + a learned, state-independent log-std (Uni-O4's BC member).

Densities are in normalised action space, summed over horizon and action dims (same convention as the diffusion
chain's per-step log-probs); ``log_prob`` takes raw actions and normalises them itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from policies.base import ObsBatch, PolicyBase
from policies.diffusion import gaussian_logprob
from policies.encoders import EncoderConfig, ObservationEncoder
from policies.normalizer import Normalizer
from policies.spec import PolicySpec


@dataclass
class GaussianPolicyConfig:
    inference_fields: ClassVar[tuple[str, ...]] = ()  # every field shapes what the weights compute
    encoder: EncoderConfig = field(default_factory=EncoderConfig)  # observation encoder
    hidden: tuple[int, ...] = (256, 256)  # MLP hidden widths
    loss: str = "nll"  # "nll" (learns mean and std) or "mse" (BC on the mean; std only moves under RL)
    init_log_std: float = -1.0  # initial log-std in normalised units (std ~0.37)
    log_std_min: float = -5.0  # clamp, keeps the density finite
    log_std_max: float = 1.0  # clamp, keeps samples mostly inside [-1, 1]
    ema: bool = False  # keep an EMA of the weights for evaluation
    ema_decay: float = 0.999  # EMA decay ceiling
    ema_power: float = 0.75  # EMA warm-up power


class GaussianPolicy(PolicyBase):
    kind = "gaussian"

    def __init__(self, spec: PolicySpec, normalizer: Normalizer, config: GaussianPolicyConfig | None = None):
        config = config or GaussianPolicyConfig()
        super().__init__(spec, normalizer, config)
        self.encoder = ObservationEncoder(spec, config.encoder)
        n_out = spec.horizon * spec.action_dim
        layers: list[nn.Module] = []
        n_in = max(self.encoder.feature_dim, 1)
        for width in config.hidden:
            layers += [nn.Linear(n_in, width), nn.Mish()]
            n_in = width
        layers.append(nn.Linear(n_in, n_out))
        self.mean_net = nn.Sequential(*layers)
        self.log_std = nn.Parameter(torch.full((spec.horizon, spec.action_dim), float(config.init_log_std)))
        self.init_ema()

    def distribution(self, obs: ObsBatch, augment: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw obs -> (mean (B, T, A), std (T, A)) in normalised action space."""
        feats = self.encoder(self.normalize_obs(obs), augment=augment)
        mean = self.mean_net(feats).reshape(-1, self.spec.horizon, self.spec.action_dim)
        std = self.log_std.clamp(self.config.log_std_min, self.config.log_std_max).exp()
        return mean, std

    def compute_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        mean, std = self.distribution(batch["obs"])
        target = self.normalize_action(batch["action"])
        if self.config.loss == "mse":
            return F.mse_loss(mean, target)
        if self.config.loss == "nll":  # per-dimension mean so its scale does not depend on the chunk size
            return -gaussian_logprob(target, mean, std).mean() / target[0].numel()
        raise ValueError(f"unknown loss '{self.config.loss}' (use 'nll' or 'mse')")

    @torch.no_grad()
    def predict(self, obs: ObsBatch, deterministic: bool = True,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Raw obs -> unnormalised chunk (B, horizon, A): the mean, or a sample when not deterministic."""
        mean, std = self.distribution(obs, augment=False)
        x = mean
        if not deterministic:
            noise = torch.randn(mean.shape, generator=generator,
                                device=generator.device if generator else mean.device).to(mean.device)
            x = mean + std * noise
        return self.unnormalize_action(x.clamp(-1.0, 1.0))

    def log_prob(self, obs: ObsBatch, actions: Any) -> torch.Tensor:
        """Log-density (B,) of raw action chunks (B, T, A), in normalised space, summed over T and A."""
        mean, std = self.distribution(obs, augment=False)
        return gaussian_logprob(self.normalize_action(actions), mean, std)
