"""The one policy interface every consumer (runner, trainers, RL, checkpoints) relies on, and shared plumbing."""

from __future__ import annotations

import dataclasses
import typing
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
            if value.ndim != len(self.spec.obs_keys[key][0]) + 2:
                raise ValueError(f"observation '{key}' must be (B, n_obs, {self.spec.obs_keys[key][0]}), "
                                 f"got {tuple(value.shape)}")
            out[key] = self.normalizer.normalize(key, value.float())
        return out

    def normalize_action(self, action: Any) -> torch.Tensor:
        a = torch.as_tensor(np.asarray(action) if not torch.is_tensor(action) else action, device=self.device)
        return self.normalizer.normalize(ACTION_KEY, a.float())

    def unnormalize_action(self, action: torch.Tensor) -> torch.Tensor:
        return self.normalizer.unnormalize(ACTION_KEY, action)


# --- typed config dataclasses <-> JSON -----------------------------------------------------------------------------
def config_to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def config_from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Rebuild a (nested) config dataclass from JSON; lists become tuples where the field is a tuple.

    Unknown keys are refused so that a checkpoint written by a newer format cannot be half-read.
    """
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{cls.__name__} has no fields {unknown}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = config_from_dict(hint, value)
        elif isinstance(value, list) and (typing.get_origin(hint) is tuple or hint is tuple):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def config_class(kind: str) -> type:
    if kind == "diffusion":
        from policies.diffusion import DiffusionPolicyConfig
        return DiffusionPolicyConfig
    if kind == "consistency":
        from policies.consistency import ConsistencyPolicyConfig
        return ConsistencyPolicyConfig
    if kind == "gaussian":
        from policies.gaussian import GaussianPolicyConfig
        return GaussianPolicyConfig
    raise ValueError(f"unknown policy kind '{kind}' (use 'diffusion', 'consistency' or 'gaussian')")


def make_policy(kind: str, spec: PolicySpec, normalizer: Normalizer, config: Any = None) -> PolicyBase:
    """Build a policy; ``config`` is the kind's config dataclass, a dict of its fields, or None for defaults."""
    cfg_cls = config_class(kind)
    if config is None:
        config = cfg_cls()
    elif isinstance(config, dict):
        config = config_from_dict(cfg_cls, config)
    if kind == "diffusion":
        from policies.diffusion import DiffusionPolicy
        return DiffusionPolicy(spec, normalizer, config)
    if kind == "consistency":
        from policies.consistency import ConsistencyPolicy
        return ConsistencyPolicy(spec, normalizer, config)
    from policies.gaussian import GaussianPolicy
    return GaussianPolicy(spec, normalizer, config)
