"""The deploy artifact: everything the robot-side node needs to run a policy, and nothing else.

A directory with two files:

* ``model.safetensors``: the weights that ship (EMA weights already copied in; no optimiser, no EMA shadow).
* ``noise_steering.safetensors``, only for a noise-steered policy (``policies/noise_steering.py``): the steering
  net that chooses the frozen policy's initial noise; the manifest's ``noise_steering`` section holds its config
  and SHA-256, and loading returns the steered policy.
* ``artifact.json``: the manifest, a JSON object with
  ``format`` / ``format_version``; ``policy`` (kind, config, PolicySpec, normaliser: enough to rebuild the network
  without the training code); ``observation`` (key -> shape, dtype) and ``action`` (dim, low, high, meaning);
  ``control_rate_hz``; ``n_obs``, ``horizon``, ``n_action_steps``; ``inference`` (network calls per chunk);
  ``safety_limits`` (a plain dict, the robot-side safety filter's limits); ``provenance`` (task, dataset, every
  stage's checkpoint and its measured success); ``weights_sha256`` and ``content_sha256``.

``content_sha256`` is the SHA-256 of the canonical JSON of the manifest without that field. The manifest includes
``weights_sha256``, so the content hash covers the weights too: one hash names the whole artifact (put it in logs,
bag files and incident reports). Loading refuses, in one line, an artifact whose format or version is unknown,
whose manifest was edited after export (content hash), whose weights file is not the exported one (weights hash),
or whose manifest disagrees with itself (observation/action spec or n_obs/n_action_steps vs the policy's spec) or
with what the caller says the robot provides.

Only torch / safetensors / numpy and this package are imported: the ROS node loads artifacts without ``robo``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from policies.base import PolicyBase
from policies.checkpoint import (_check_normalizer, _check_shapes, _first_non_finite, _sha256,
                                 replace_directory)
from policies.noise_steering import NoisePolicyConfig, NoiseSteering, SteeredPolicy
from policies.normalizer import Normalizer
from policies.registry import config_to_dict, make_policy
from policies.spec import CheckpointError, CheckpointMismatch, PolicySpec

ARTIFACT_FORMAT = "robo-deploy-artifact"
ARTIFACT_VERSION = 1  # bump when a field changes meaning; readers refuse versions they do not know
READABLE_VERSIONS = (1,)
MANIFEST_FILE = "artifact.json"
WEIGHTS_FILE = "model.safetensors"
STEERING_FILE = "noise_steering.safetensors"
MANIFEST_KEY = "robo_artifact"  # safetensors header metadata: the content hash the weights were exported with

__all__ = ["ARTIFACT_VERSION", "ArtifactError", "MANIFEST_FILE", "STEERING_FILE", "WEIGHTS_FILE", "content_hash",
           "is_artifact", "load_artifact", "read_manifest", "save_artifact"]


class ArtifactError(CheckpointError):
    """An artifact that must not drive a robot; the message is one line saying what is wrong and what to do."""


def is_artifact(path: str | os.PathLike) -> bool:
    """True if ``path`` is a directory holding an artifact manifest (the node accepts checkpoints too)."""
    return (Path(path) / MANIFEST_FILE).is_file()


def content_hash(manifest: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON (sorted keys, no whitespace) of ``manifest`` without ``content_sha256``."""
    body = {k: v for k, v in manifest.items() if k != "content_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _spec_sections(spec: PolicySpec) -> dict[str, Any]:
    """The manifest's spec fields, derived from the policy spec (so they can be cross-checked on load)."""
    return {"observation": {k: {"shape": list(shape), "dtype": dtype} for k, (shape, dtype) in spec.obs_keys.items()},
            "n_obs": spec.n_obs, "horizon": spec.horizon, "n_action_steps": spec.n_action_steps}


# --- writing -----------------------------------------------------------------------------------------------------
def save_artifact(path_dir: str | os.PathLike, policy: PolicyBase | SteeredPolicy, *, control_rate_hz: float,
                  safety_limits: dict[str, Any], provenance: dict[str, Any],
                  action_low: list[float] | None = None, action_high: list[float] | None = None,
                  action_meaning: str = "", inference_steps: int = 1) -> dict[str, Any]:
    """Write ``policy`` (with the weights it runs now: call under ``shipped_weights()`` or after
    ``use_ema_weights()``) as an artifact, atomically; a :class:`SteeredPolicy` ships its base policy and its
    steering net. Returns the manifest written."""
    from dataclasses import asdict

    from safetensors.torch import save_file

    steering = policy.steering if isinstance(policy, SteeredPolicy) else None
    policy = policy.base if isinstance(policy, SteeredPolicy) else policy

    if not control_rate_hz > 0:
        raise ArtifactError(f"control rate must be positive, got {control_rate_hz}; pass the rate the policy was "
                            f"trained at (the dataset's fps)")
    if not isinstance(safety_limits, dict) or not safety_limits:
        raise ArtifactError("an artifact needs safety limits for the robot (a non-empty dict); pass the robot's "
                            "limits file")
    dim = policy.spec.action_dim
    low = [-1.0] * dim if action_low is None else [float(v) for v in action_low]
    high = [1.0] * dim if action_high is None else [float(v) for v in action_high]
    if len(low) != dim or len(high) != dim or any(lo >= hi for lo, hi in zip(low, high)):
        raise ArtifactError(f"action bounds must be {dim} pairs with low < high, got low={low}, high={high}")
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in policy.state_dict().items()}
    steering_tensors = ({k: v.detach().cpu().contiguous().clone() for k, v in steering.state_dict().items()}
                        if steering is not None else {})
    bad = _first_non_finite(tensors) or _first_non_finite(steering_tensors)
    if bad:
        raise ArtifactError(f"refusing to export: weight '{bad}' is NaN or inf (use an earlier checkpoint)")
    # Inference needs no EMA: the shipped weights are the model's own, and rebuilding skips the EMA copy.
    policy_config = config_to_dict(policy.config)
    if "ema" in policy_config:
        policy_config["ema"] = False
    manifest: dict[str, Any] = {
        "format": ARTIFACT_FORMAT, "format_version": ARTIFACT_VERSION,
        "policy": {"kind": policy.kind, "config": policy_config, "spec": policy.spec.to_json(),
                   "normalizer": policy.normalizer.to_json()},
        **_spec_sections(policy.spec),
        "action": {"dim": dim, "low": low, "high": high, "meaning": action_meaning},
        "control_rate_hz": float(control_rate_hz),
        "inference": {"steps": int(inference_steps)},
        "safety_limits": safety_limits,
        "provenance": provenance,
    }
    if steering is not None:
        manifest["noise_steering"] = {"config": asdict(steering.config)}
    json.dumps(manifest)  # a non-serialisable provenance must fail before anything is written

    def fill(directory: Path) -> None:
        save_file(tensors, str(directory / WEIGHTS_FILE), metadata={MANIFEST_KEY: ARTIFACT_FORMAT})
        if steering is not None:
            save_file(steering_tensors, str(directory / STEERING_FILE), metadata={MANIFEST_KEY: ARTIFACT_FORMAT})
            manifest["noise_steering"]["weights_sha256"] = _sha256(directory / STEERING_FILE)
        manifest["weights_sha256"] = _sha256(directory / WEIGHTS_FILE)
        manifest["content_sha256"] = content_hash(manifest)
        (directory / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))

    replace_directory(path_dir, fill)
    return manifest


# --- reading -----------------------------------------------------------------------------------------------------
def read_manifest(path_dir: str | os.PathLike) -> dict[str, Any]:
    """The manifest, verified (format, version, content hash, internal consistency); weights are not read."""
    path = Path(path_dir)
    for name in (MANIFEST_FILE, WEIGHTS_FILE):
        if not (path / name).is_file():
            raise ArtifactError(f"{path} is not a deploy artifact: {name} is missing (make one with robo export)")
    try:
        manifest = json.loads((path / MANIFEST_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ArtifactError(f"{path / MANIFEST_FILE} is not valid JSON ({err}); re-export the artifact") from None
    if not isinstance(manifest, dict) or manifest.get("format") != ARTIFACT_FORMAT:
        raise ArtifactError(f"{path / MANIFEST_FILE} is not a {ARTIFACT_FORMAT} manifest; re-export with robo export")
    version = manifest.get("format_version")
    if version not in READABLE_VERSIONS:
        raise ArtifactError(f"{path} has artifact format version {version!r}; this code reads {list(READABLE_VERSIONS)}"
                            f" (deploy the matching release or re-export)")
    recorded = manifest.get("content_sha256")
    if recorded != content_hash(manifest):
        raise ArtifactError(f"{path / MANIFEST_FILE} does not match its content hash (edited after export?); "
                            f"re-export the artifact instead of editing it")
    required = ("policy", "observation", "action", "control_rate_hz", "n_obs", "horizon", "n_action_steps",
                "safety_limits", "provenance", "weights_sha256")
    missing = [k for k in required if k not in manifest]
    if missing:
        raise ArtifactError(f"{path / MANIFEST_FILE} lacks {missing}; re-export the artifact")
    try:
        spec = PolicySpec.from_json(manifest["policy"]["spec"])
    except (KeyError, TypeError, ValueError) as err:
        raise ArtifactError(f"{path / MANIFEST_FILE} has a malformed policy spec ({err}); re-export") from None
    own = _spec_sections(spec)
    for key, value in own.items():
        if manifest[key] != value:
            raise ArtifactError(f"{path}: manifest {key}={json.dumps(manifest[key])[:80]} disagrees with the "
                                f"policy's {json.dumps(value)[:80]}; re-export the artifact")
    if manifest["action"].get("dim") != spec.action_dim:
        raise ArtifactError(f"{path}: manifest action dim {manifest['action'].get('dim')} disagrees with the "
                            f"policy's {spec.action_dim}; re-export the artifact")
    try:
        _check_normalizer(path, spec, manifest["policy"].get("normalizer") or {})
    except CheckpointError as err:
        raise ArtifactError(str(err)) from None
    steering = manifest.get("noise_steering")
    if steering is not None:
        if not isinstance(steering, dict) or not isinstance(steering.get("config"), dict) \
                or "weights_sha256" not in steering:
            raise ArtifactError(f"{path / MANIFEST_FILE} has a malformed noise_steering section; re-export")
        if not (path / STEERING_FILE).is_file():
            raise ArtifactError(f"{path} is a noise-steered artifact but {STEERING_FILE} is missing; copy the "
                                f"artifact directory as a whole")
    return manifest


def load_artifact(path_dir: str | os.PathLike, device: str | torch.device = "cpu", *,
                  expect_obs: dict[str, Any] | None = None, expect_action_dim: int | None = None,
                  expect_control_rate_hz: float | None = None) -> tuple[PolicyBase, dict[str, Any]]:
    """Rebuild the policy of an artifact, in eval mode, and return ``(policy, manifest)``.

    ``expect_*`` describe the robot (observation key -> (shape, dtype) or an object with .shape/.dtype, the
    command size, the control rate): an artifact that does not fit is refused (CheckpointMismatch, one line).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path_dir)
    manifest = read_manifest(path)
    weights_file = path / WEIGHTS_FILE
    if _sha256(weights_file) != manifest["weights_sha256"]:
        raise ArtifactError(f"{weights_file} is not the file this manifest was exported with (SHA-256 differs); "
                            f"copy the artifact directory as a whole")
    spec = PolicySpec.from_json(manifest["policy"]["spec"])
    if expect_obs is not None or expect_action_dim is not None:
        spec.check_compatible(expect_obs if expect_obs is not None else dict(spec.obs_keys), expect_action_dim)
    if expect_control_rate_hz is not None and abs(float(expect_control_rate_hz) - manifest["control_rate_hz"]) > 1e-6:
        raise CheckpointMismatch(f"{path}: the policy was trained at {manifest['control_rate_hz']} Hz but the robot "
                                 f"runs at {expect_control_rate_hz} Hz; set the control rate to match or retrain")
    try:
        tensors = load_file(str(weights_file))
    except (SafetensorError, OSError) as err:
        raise ArtifactError(f"{weights_file} is unreadable: {err}") from None
    try:
        normalizer = Normalizer.from_json(manifest["policy"]["normalizer"])
        policy = make_policy(manifest["policy"]["kind"], spec, normalizer, manifest["policy"]["config"])
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ArtifactError(f"{path / MANIFEST_FILE} cannot be rebuilt ({first}); re-export the artifact") from None
    bad = _first_non_finite(tensors)
    if bad:
        raise ArtifactError(f"{weights_file}: weight '{bad}' is NaN or inf; this artifact cannot drive anything")
    try:
        _check_shapes(path, policy.state_dict(), tensors)
    except CheckpointError as err:
        raise ArtifactError(str(err)) from None
    policy.load_state_dict(tensors, strict=True)
    policy.to(device)
    policy.eval()
    policy.requires_grad_(False)
    if "noise_steering" in manifest:
        return _load_steered(path, policy, manifest["noise_steering"], device), manifest
    return policy, manifest


def _load_steered(path: Path, policy: PolicyBase, section: dict[str, Any],
                  device: str | torch.device) -> SteeredPolicy:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights_file = path / STEERING_FILE
    if _sha256(weights_file) != section["weights_sha256"]:
        raise ArtifactError(f"{weights_file} is not the file this manifest was exported with (SHA-256 differs); "
                            f"copy the artifact directory as a whole")
    try:
        steering = NoiseSteering(policy, NoisePolicyConfig.from_json(section["config"]))
        tensors = load_file(str(weights_file))
    except (SafetensorError, OSError, TypeError, ValueError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ArtifactError(f"{weights_file} cannot be loaded ({first}); re-export the artifact") from None
    bad = _first_non_finite(tensors)
    if bad:
        raise ArtifactError(f"{weights_file}: weight '{bad}' is NaN or inf; this artifact cannot drive anything")
    try:
        _check_shapes(path, steering.state_dict(), tensors, file=STEERING_FILE)
    except CheckpointError as err:
        raise ArtifactError(str(err)) from None
    steering.load_state_dict(tensors, strict=True)
    steering.to(device)
    steering.requires_grad_(False)
    return SteeredPolicy(policy, steering).eval()
