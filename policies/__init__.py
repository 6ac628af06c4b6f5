"""Policies: observation encoders, denoisers, diffusion / consistency / Gaussian policies, normaliser, checkpoints.

Attributes are resolved lazily so that ``import policies.normalizer`` (numpy only, used by the data sampler) does
not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Normalizer": "policies.normalizer",
    "PolicySpec": "policies.spec",
    "CheckpointError": "policies.spec",
    "CheckpointMismatch": "policies.spec",
    "Policy": "policies.base",
    "DenoisingPolicy": "policies.base",
    "make_policy": "policies.registry",
    "DiffusionPolicy": "policies.diffusion",
    "DiffusionPolicyConfig": "policies.diffusion",
    "ConsistencyPolicy": "policies.consistency",
    "ConsistencyPolicyConfig": "policies.consistency",
    "GaussianPolicy": "policies.gaussian",
    "GaussianPolicyConfig": "policies.gaussian",
    "EncoderConfig": "policies.encoders",
    "DenoiserConfig": "policies.denoisers",
    "save_checkpoint": "policies.checkpoint",
    "load_checkpoint": "policies.checkpoint",
    "check_against": "policies.checkpoint",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'policies' has no attribute '{name}'")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
