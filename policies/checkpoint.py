"""Checkpoint format: a directory with ``model.safetensors`` (weights, EMA weights as ``ema.<name>``) and
``config.json`` (format version, policy kind and config, PolicySpec, normaliser, user metadata). No pickles:
loading needs nothing but these two files and this package.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from policies.base import PolicyBase, config_to_dict, make_policy
from policies.normalizer import Normalizer
from policies.spec import ACTION_KEY, CheckpointError, CheckpointMismatch, PolicySpec

FORMAT_VERSION = 1  # bump on any incompatible change of the layout below
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
_EMA_PREFIX = "ema."

__all__ = ["CheckpointError", "CheckpointMismatch", "FORMAT_VERSION", "check_against", "load_checkpoint",
           "read_config", "save_checkpoint"]


def save_checkpoint(path_dir: str | os.PathLike, policy: PolicyBase, extra: dict[str, Any] | None = None) -> Path:
    """Write the policy to ``path_dir`` (created). ``extra``: JSON-serialisable metadata (step, dataset, task...)."""
    from safetensors.torch import save_file

    path = Path(path_dir)
    path.mkdir(parents=True, exist_ok=True)
    # clone(): safetensors refuses tensors sharing storage, and a copy never aliases the live model.
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in policy.state_dict().items()}
    ema_step = None
    if policy.ema is not None:
        names = [n for n, _ in policy.named_parameters()]
        for name, shadow in zip(names, policy.ema.shadow_params):
            tensors[_EMA_PREFIX + name] = shadow.detach().cpu().contiguous().clone()
        ema_step = int(policy.ema.optimization_step)
    config = {
        "format_version": FORMAT_VERSION,
        "policy_kind": policy.kind,
        "policy_config": config_to_dict(policy.config),
        "spec": policy.spec.to_json(),
        "normalizer": policy.normalizer.to_json(),
        "ema_step": ema_step,
        "extra": extra or {},
    }
    text = json.dumps(config, indent=2)  # serialise first: a bad ``extra`` must not leave half a checkpoint
    # Write to temporary names then rename, so a crash never leaves a config pointing at missing weights.
    save_file(tensors, str(path / (WEIGHTS_FILE + ".tmp")))
    (path / (CONFIG_FILE + ".tmp")).write_text(text)
    os.replace(path / (WEIGHTS_FILE + ".tmp"), path / WEIGHTS_FILE)
    os.replace(path / (CONFIG_FILE + ".tmp"), path / CONFIG_FILE)
    return path


def read_config(path_dir: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint's config.json, validated (version, normaliser present); no weights are read."""
    path = Path(path_dir)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (path / name).is_file():
            raise CheckpointError(f"{path} is not a checkpoint: {name} is missing")
    try:
        config = json.loads((path / CONFIG_FILE).read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path / CONFIG_FILE} is not valid JSON ({err.msg} at line {err.lineno})") from None
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {version!r}; this code reads version "
                              f"{FORMAT_VERSION} (use the matching release or re-export the checkpoint)")
    for key in ("policy_kind", "policy_config", "spec"):
        if key not in config:
            raise CheckpointError(f"{path / CONFIG_FILE} lacks '{key}'; the checkpoint is incomplete")
    norm = config.get("normalizer") or {}
    needed = [*config["spec"].get("obs_keys", {}), ACTION_KEY]
    missing = [k for k in needed if k not in norm]
    if missing:
        raise CheckpointError(f"{path} has no normaliser statistics for {missing}; refusing to run a blind policy "
                              f"(re-save it with the normaliser fitted on its training data)")
    return config


def load_checkpoint(path_dir: str | os.PathLike, device: str | torch.device = "cpu",
                    use_ema: bool = True) -> PolicyBase:
    """Rebuild the policy from ``path_dir``; ``use_ema`` copies the EMA weights (if saved) into the model."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path_dir)
    config = read_config(path)
    try:
        spec = PolicySpec.from_json(config["spec"])
        normalizer = Normalizer.from_json(config["normalizer"])
        policy = make_policy(config["policy_kind"], spec, normalizer, config["policy_config"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path / CONFIG_FILE} cannot be rebuilt: {err}") from None
    try:
        tensors = load_file(str(path / WEIGHTS_FILE))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path / WEIGHTS_FILE} is unreadable: {err}") from None
    ema = {k[len(_EMA_PREFIX):]: v for k, v in tensors.items() if k.startswith(_EMA_PREFIX)}
    weights = {k: v for k, v in tensors.items() if not k.startswith(_EMA_PREFIX)}
    _check_shapes(path, policy.state_dict(), weights)
    policy.load_state_dict(weights, strict=True)
    if policy.ema is not None and ema:
        params = dict(policy.named_parameters())
        _check_shapes(path, {k: p.detach() for k, p in params.items()}, ema, what="EMA weights")
        for shadow, name in zip(policy.ema.shadow_params, params):
            shadow.copy_(ema[name])
        policy.ema.optimization_step = int(config.get("ema_step") or 0)
        if use_ema:
            policy.use_ema_weights()
    policy.to(device)
    policy.eval()
    return policy


def _check_shapes(path: Path, expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor],
                  what: str = "weights") -> None:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{path / WEIGHTS_FILE} {what} do not match the config: missing {missing[:3]}"
                              f"{'...' if len(missing) > 3 else ''}, unexpected {unexpected[:3]}"
                              f"{'...' if len(unexpected) > 3 else ''}")
    for name, tensor in expected.items():
        if tuple(found[name].shape) != tuple(tensor.shape):
            raise CheckpointError(f"{path / WEIGHTS_FILE} {what} '{name}' has shape {tuple(found[name].shape)}, "
                                  f"the config builds {tuple(tensor.shape)}")


def check_against(policy: PolicyBase | PolicySpec, obs_spec: dict[str, Any] | PolicySpec,
                  action_dim: int | None = None) -> None:
    """Refuse (CheckpointMismatch, one line) a policy whose obs keys/shapes or action size differ from a
    dataset's or environment's. ``obs_spec``: key -> (shape, dtype) / ArraySpec-like, or a PolicySpec."""
    spec = policy if isinstance(policy, PolicySpec) else policy.spec
    spec.check_compatible(obs_spec, action_dim)
