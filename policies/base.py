"""The one policy interface every consumer (runner, trainers, RL, checkpoints) relies on, and shared plumbing."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from policies.normalizer import Normalizer
from policies.spec import ACTION_KEY, PolicySpec

ObsBatch = dict[str, "np.ndarray | torch.Tensor"]  # key -> (B, n_obs, ...) raw (unnormalised) observations


@runtime_checkable
class Policy(Protocol):
    spec: PolicySpec
    normalizer: Normalizer
    kind: str  # "diffusion" | "consistency" | "gaussian": the checkpoint's policy kind

    def predict(self, obs: ObsBatch) -> torch.Tensor:
        """Raw observations (B, n_obs, ...) -> unnormalised action chunk (B, horizon, A)."""

    def compute_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """Sampler batch {"obs": {key: (B, n_obs, ...)}, "action": (B, horizon, A)} (raw) -> scalar loss."""

    def after_optimizer_step(self) -> None:
        """Call after every optimiser step: updates EMA (and target) weights."""

    def to(self, device: Any) -> Policy: ...


@runtime_checkable
class DenoisingPolicy(Policy, Protocol):
    def sample_chain(self, obs: ObsBatch, generator: torch.Generator | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (actions (B, T, A) unnormalised, chain (B, K+1, T, A) normalised, step_logprobs (B, K))."""

    def chain_logprob(self, obs: ObsBatch, chain: torch.Tensor) -> torch.Tensor:
        """Recompute step_logprobs (B, K) of a stored chain under the current weights (differentiable)."""


class PolicyBase(nn.Module):
    """Normalisation, device handling and EMA shared by all policy classes."""

    kind = "base"

    def __init__(self, spec: PolicySpec, normalizer: Normalizer, config: Any):
        super().__init__()
        missing = [k for k in [*spec.obs_keys, ACTION_KEY] if k not in normalizer.stats]
        if missing:
            raise ValueError(f"normaliser has no statistics for {missing}; "
                             f"fit it on the dataset (SequenceSampler.fit_normalizer)")
        self.spec, self.normalizer, self.config = spec, normalizer, config
        self.ema: Any = None  # diffusers EMAModel, created by init_ema() once all weights exist

    # --- EMA -------------------------------------------------------------------------------------------------
    def init_ema(self) -> None:
        if getattr(self.config, "ema", False):
            from diffusers.training_utils import EMAModel  # lazy: importing diffusers costs seconds

            self.ema = EMAModel(self.parameters(), decay=self.config.ema_decay, power=self.config.ema_power,
                                use_ema_warmup=True, foreach=False)

    def after_optimizer_step(self) -> None:
        if self.ema is not None:
            self.ema.step(self.parameters())

    def use_ema_weights(self) -> None:
        """Copy EMA weights into the model (what evaluation and deployment run); the EMA itself is kept."""
        if self.ema is not None:
            self.ema.copy_to(self.parameters())
            self.forget_cached_features()

    def forget_cached_features(self) -> None:
        """Drop features computed with other weights (the encoders' frame caches)."""
        for module in self.modules():
            if module is not self and hasattr(module, "clear_frame_cache"):
                module.clear_frame_cache()

    def load_state_dict(self, *args: Any, **kwargs: Any) -> Any:
        result = super().load_state_dict(*args, **kwargs)
        self.forget_cached_features()
        return result

    @contextlib.contextmanager
    def shipped_weights(self) -> Iterator[PolicyBase]:
        """Temporarily run the weights that ship (the EMA when there is one), in eval mode; training weights and
        mode come back afterwards, bit for bit. In-training validation and selection score these, never the raw
        weights, so ``best`` is chosen by the model that ``robo eval`` and the robot load."""
        was_training = self.training
        self.eval()
        if self.ema is not None:
            self.ema.store(self.parameters())
            self.ema.copy_to(self.parameters())
            self.forget_cached_features()
        try:
            yield self
        finally:
            if self.ema is not None:
                self.ema.restore(self.parameters())
                self.forget_cached_features()
            self.train(was_training)

    def to(self, *args: Any, **kwargs: Any) -> PolicyBase:
        super().to(*args, **kwargs)
        if self.ema is not None:  # EMAModel keeps plain tensors, not registered buffers
            self.ema.to(device=self.device)
        return self

    # --- data conversion ---------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def normalize_obs(self, obs: ObsBatch) -> dict[str, torch.Tensor]:
        """Raw obs (numpy or tensors, (B, n_obs, ...)) -> normalised float tensors on the policy's device."""
        out = {}
        for key in self.spec.obs_keys:
            if key not in obs:
                raise KeyError(f"observation '{key}' missing (got {sorted(obs)})")
            value = torch.as_tensor(np.asarray(obs[key]) if not torch.is_tensor(obs[key]) else obs[key],
                                    device=self.device)
            shape = tuple(self.spec.obs_keys[key][0])
            if value.ndim != len(shape) + 2 or tuple(value.shape[2:]) != shape:
                raise ValueError(f"observation '{key}' must be (B, n_obs, {', '.join(map(str, shape))}), got "
                                 f"{tuple(value.shape)}; the encoder was built for that size: resize the source "
                                 f"or retrain")
            out[key] = self.normalizer.normalize(key, value.float())
        return out

    def normalize_action(self, action: Any) -> torch.Tensor:
        a = torch.as_tensor(np.asarray(action) if not torch.is_tensor(action) else action, device=self.device)
        return self.normalizer.normalize(ACTION_KEY, a.float())

    def unnormalize_action(self, action: torch.Tensor) -> torch.Tensor:
        return self.normalizer.unnormalize(ACTION_KEY, action)
