"""Checkpoint format: a directory with ``model.safetensors`` (weights, EMA weights as ``ema.<name>``) and
``config.json`` (format version, policy kind and config, PolicySpec, normaliser, user metadata). No pickles:
loading needs nothing but these two files and this package.

What makes it strict:
* A save is staged in a sibling directory and swapped in by rename, so a crash never pairs new weights with an
  old config (or with another file written beside them, such as the trainer state). ``config.json`` also records
  the SHA-256 of the weights file, so a hand-mixed pair is refused too.
* The weights file's header carries the record the weights were trained with (kind, spec, normaliser, the policy
  config). ``config.json`` may change what only steers inference (``inference_fields`` of the config class, e.g.
  the number of DDIM steps); anything else that disagrees (horizon, n_obs, image size, scheduler, normaliser) is
  refused in one line, because the weights would silently compute something else.
* Normaliser statistics must have the right length, a non-zero scale and finite values; weights must be finite.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from policies.base import PolicyBase
from policies.normalizer import Normalizer
from policies.registry import config_class, config_to_dict, make_policy
from policies.spec import ACTION_KEY, CheckpointError, CheckpointMismatch, PolicySpec

FORMAT_VERSION = 2  # 2: trained record in the weights header + weights hash; 1 is still read (fewer checks)
READABLE_VERSIONS = (1, 2)
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TRAINED_RECORD_KEY = "robo_trained"  # safetensors header metadata: the config the weights were trained with
_EMA_PREFIX = "ema."

__all__ = ["CheckpointError", "CheckpointMismatch", "FORMAT_VERSION", "check_against", "load_checkpoint",
           "read_config", "recover_interrupted_save", "replace_directory", "save_checkpoint"]


# --- atomic directory replacement ------------------------------------------------------------------------------
def _staging(path: Path) -> tuple[Path, Path]:
    return path.with_name(f".{path.name}.staging"), path.with_name(f".{path.name}.replaced")


def replace_directory(path: str | os.PathLike, fill: Callable[[Path], None]) -> Path:
    """Write a directory as a whole: ``fill(staging_dir)`` writes every file, then the staging directory takes the
    place of ``path`` by two renames. Readers see the old directory or the new one, never a mix; a crash between
    the renames leaves a complete staging directory that :func:`recover_interrupted_save` promotes."""
    path = Path(path)
    staging, replaced = _staging(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_interrupted_save(path)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    fill(staging)
    for f in staging.iterdir():  # on disk before the rename makes them visible
        with open(f, "rb") as handle:
            os.fsync(handle.fileno())
    shutil.rmtree(replaced, ignore_errors=True)
    if path.exists():
        os.replace(path, replaced)
    os.replace(staging, path)
    shutil.rmtree(replaced, ignore_errors=True)
    return path


def recover_interrupted_save(path: str | os.PathLike) -> bool:
    """Finish a :func:`replace_directory` that a crash interrupted; True if something was restored.

    ``path`` is only ever moved aside after its staging directory is complete, so when ``path`` is missing the
    staging directory (if any) is whole and wins; otherwise the directory it replaced comes back."""
    path = Path(path)
    staging, replaced = _staging(path)
    if path.exists():
        shutil.rmtree(replaced, ignore_errors=True)
        return False
    for candidate in (staging, replaced):
        if candidate.is_dir():
            os.replace(candidate, path)
            return True
    return False


# --- saving ------------------------------------------------------------------------------------------------------
def _trained_record(policy: PolicyBase) -> dict[str, Any]:
    return {"policy_kind": policy.kind, "policy_config": config_to_dict(policy.config),
            "spec": policy.spec.to_json(), "normalizer": policy.normalizer.to_json()}


def save_checkpoint(path_dir: str | os.PathLike, policy: PolicyBase, extra: dict[str, Any] | None = None,
                    also: Callable[[Path], None] | None = None) -> Path:
    """Write the policy to ``path_dir`` as a whole (staged, then swapped in). ``extra``: JSON-serialisable metadata
    (step, dataset, task...). ``also(dir)`` may write more files into the same atomic unit (the trainer state)."""
    from safetensors.torch import save_file

    # clone(): safetensors refuses tensors sharing storage, and a copy never aliases the live model.
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in policy.state_dict().items()}
    ema_step = None
    if policy.ema is not None:
        names = [n for n, _ in policy.named_parameters()]
        for name, shadow in zip(names, policy.ema.shadow_params):
            tensors[_EMA_PREFIX + name] = shadow.detach().cpu().contiguous().clone()
        ema_step = int(policy.ema.optimization_step)
    bad = _first_non_finite(tensors)
    if bad:
        raise CheckpointError(f"refusing to save {path_dir}: weight '{bad}' is NaN or inf (training diverged; "
                              f"lower the learning rate or resume from an earlier checkpoint)")
    record = _trained_record(policy)
    config = {"format_version": FORMAT_VERSION, **record, "ema_step": ema_step, "extra": extra or {}}
    json.dumps(config)  # serialise first: a bad ``extra`` must not leave half a checkpoint

    def fill(directory: Path) -> None:
        save_file(tensors, str(directory / WEIGHTS_FILE), metadata={TRAINED_RECORD_KEY: json.dumps(record)})
        config["weights_sha256"] = _sha256(directory / WEIGHTS_FILE)
        (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2))
        if also is not None:
            also(directory)

    return replace_directory(path_dir, fill)


# --- reading -----------------------------------------------------------------------------------------------------
def read_config(path_dir: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint's config.json, validated (version, spec, normaliser statistics); weights are not read."""
    path = Path(path_dir)
    recover_interrupted_save(path)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (path / name).is_file():
            raise CheckpointError(f"{path} is not a checkpoint: {name} is missing")
    try:
        config = json.loads((path / CONFIG_FILE).read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path / CONFIG_FILE} is not valid JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path / CONFIG_FILE} must hold a JSON object")
    version = config.get("format_version")
    if version not in READABLE_VERSIONS:
        raise CheckpointError(f"{path} has checkpoint format version {version!r}; this code reads versions "
                              f"{list(READABLE_VERSIONS)} (use the matching release or re-export the checkpoint)")
    for key in ("policy_kind", "policy_config", "spec"):
        if key not in config:
            raise CheckpointError(f"{path / CONFIG_FILE} lacks '{key}'; the checkpoint is incomplete")
    try:
        spec = PolicySpec.from_json(config["spec"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path / CONFIG_FILE} has a malformed spec ({err})") from None
    _check_normalizer(path, spec, config.get("normalizer") or {})
    return config


def _check_normalizer(path: Path, spec: PolicySpec, norm: dict[str, Any]) -> None:
    needed = {**{k: shape for k, (shape, _) in spec.obs_keys.items()}, ACTION_KEY: (spec.action_dim,)}
    missing = [k for k in needed if k not in norm]
    if missing:
        raise CheckpointError(f"{path} has no normaliser statistics for {missing}; refusing to run a blind policy "
                              f"(re-save it with the normaliser fitted on its training data)")
    for key, shape in needed.items():
        stats = norm[key]
        try:
            scale, offset = np.asarray(stats["scale"], np.float64), np.asarray(stats["offset"], np.float64)
            mode = stats["mode"]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: normaliser statistics for '{key}' are malformed "
                                  f"(need scale, offset, mode)") from None
        want = (shape[-1],) if mode in ("image", "depth") else tuple(shape)
        if scale.shape != want or offset.shape != want:
            raise CheckpointError(f"{path}: normaliser statistics for '{key}' have length {scale.shape}/"
                                  f"{offset.shape} but '{key}' needs {want}; refit the normaliser on this data")
        if not (np.all(np.isfinite(scale)) and np.all(np.isfinite(offset))):
            raise CheckpointError(f"{path}: normaliser statistics for '{key}' contain NaN or inf; refit them")
        if np.any(scale == 0):
            raise CheckpointError(f"{path}: normaliser scale for '{key}' is zero (it would erase the input); refit it")


def _read_trained_record(weights: Path) -> dict[str, Any] | None:
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as handle:
        text = (handle.metadata() or {}).get(TRAINED_RECORD_KEY)
    return json.loads(text) if text else None


def _check_trained_record(path: Path, config: dict[str, Any], trained: dict[str, Any]) -> None:
    """Refuse a config.json that disagrees with what the weights were trained with, except inference settings."""
    if config["policy_kind"] != trained["policy_kind"]:
        raise CheckpointError(f"{path}: config.json says a {config['policy_kind']} policy but the weights are a "
                              f"{trained['policy_kind']} policy; restore config.json from the training run")
    inference = set(getattr(config_class(trained["policy_kind"]), "inference_fields", ()))
    given = {k: v for k, v in config["policy_config"].items() if k not in inference}
    want = {k: v for k, v in trained["policy_config"].items() if k not in inference}
    for section, found, expected in (("spec", config["spec"], trained["spec"]),
                                     ("normalizer", config.get("normalizer"), trained["normalizer"]),
                                     ("policy_config", given, want)):
        where = _first_difference(found, expected, section)
        if where:
            name, have, trained_with = where
            raise CheckpointError(f"{path}: config.json has {name}={have} but the weights were trained with "
                                  f"{trained_with}; restore config.json from the training run or retrain")


def _first_difference(found: Any, expected: Any, name: str) -> tuple[str, Any, Any] | None:
    if isinstance(expected, dict) and isinstance(found, dict):
        for key in expected:  # keys only in ``found`` are newer fields with defaults: not a disagreement
            if key not in found:
                continue
            diff = _first_difference(found[key], expected[key], f"{name}.{key}")
            if diff:
                return diff
        return None
    if isinstance(expected, (list, tuple)) and isinstance(found, (list, tuple)) and len(found) == len(expected):
        for i, (f, e) in enumerate(zip(found, expected)):
            diff = _first_difference(f, e, f"{name}[{i}]")
            if diff:
                return diff
        return None
    if found != expected:
        short = lambda v: json.dumps(v)[:60]  # noqa: E731 - a long normaliser vector stays one line
        return name, short(found), short(expected)
    return None


def load_checkpoint(path_dir: str | os.PathLike, device: str | torch.device = "cpu",
                    use_ema: bool = True) -> PolicyBase:
    """Rebuild the policy from ``path_dir``; ``use_ema`` copies the EMA weights (if saved) into the model, which
    is what evaluation and deployment run. Training resumes with ``use_ema=False`` (raw weights; EMA kept aside)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path_dir)
    config = read_config(path)
    weights_file = path / WEIGHTS_FILE
    try:
        trained = _read_trained_record(weights_file)
        tensors = load_file(str(weights_file))
    except (SafetensorError, OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{weights_file} is unreadable: {err}") from None
    recorded = config.get("weights_sha256")
    if recorded and recorded != _sha256(weights_file):
        raise CheckpointError(f"{weights_file} is not the file config.json was saved with (SHA-256 differs: a copy "
                              f"or save mixed two checkpoints); use a complete checkpoint directory")
    if trained is not None:
        _check_trained_record(path, config, trained)
    try:
        spec = PolicySpec.from_json(config["spec"])
        normalizer = Normalizer.from_json(config["normalizer"])
        policy = make_policy(config["policy_kind"], spec, normalizer, config["policy_config"])
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, ZeroDivisionError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"{path / CONFIG_FILE} cannot be rebuilt ({first}); the policy config is malformed") \
            from None
    bad = _first_non_finite(tensors)
    if bad:
        raise CheckpointError(f"{weights_file}: weight '{bad}' is NaN or inf; this checkpoint cannot drive anything "
                              f"(use an earlier one)")
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


def _first_non_finite(tensors: dict[str, torch.Tensor]) -> str | None:
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_shapes(path: Path, expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor],
                  what: str = "weights", file: str = WEIGHTS_FILE) -> None:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{path / file} {what} do not match the config: missing {missing[:3]}"
                              f"{'...' if len(missing) > 3 else ''}, unexpected {unexpected[:3]}"
                              f"{'...' if len(unexpected) > 3 else ''}")
    for name, tensor in expected.items():
        if tuple(found[name].shape) != tuple(tensor.shape):
            raise CheckpointError(f"{path / file} {what} '{name}' has shape {tuple(found[name].shape)}, "
                                  f"the config builds {tuple(tensor.shape)} (horizon, n_obs or image size differ "
                                  f"from training?)")


def check_against(policy: PolicyBase | PolicySpec, obs_spec: dict[str, Any] | PolicySpec,
                  action_dim: int | None = None) -> None:
    """Refuse (CheckpointMismatch, one line) a policy whose obs keys/shapes or action size differ from a
    dataset's or environment's. ``obs_spec``: key -> (shape, dtype) / ArraySpec-like, or a PolicySpec."""
    spec = policy if isinstance(policy, PolicySpec) else policy.spec
    spec.check_compatible(obs_spec, action_dim)
