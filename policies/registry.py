"""The policy kinds by name: their config classes and constructors, and config dataclasses <-> JSON.

Kept apart from ``policies.base`` (the interface the policy classes import) so that nothing the policy classes
import also imports them back.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from policies.base import PolicyBase
from policies.normalizer import Normalizer
from policies.spec import PolicySpec

KINDS = ("diffusion", "consistency", "gaussian")


def config_to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def config_from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Rebuild a (nested) config dataclass from JSON; lists become tuples where the field is a tuple.

    Unknown keys are refused so that a checkpoint written by a newer format cannot be half-read.
    """
    if not isinstance(data, dict):
        raise ValueError(f"{cls.__name__} must be a mapping of its fields, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{cls.__name__} has no fields {unknown}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ValueError(f"{cls.__name__}.{name} must be a mapping of {hint.__name__} fields, got {value!r}")
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
    raise ValueError(f"unknown policy kind '{kind}' (use one of {', '.join(KINDS)})")


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
