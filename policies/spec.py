"""What a policy consumes and produces, stored in every checkpoint so a mismatch is caught before the robot moves."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ACTION_KEY = "action"  # the normaliser's key for the action (same name as the dataset array)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (missing files, unknown version, no normaliser, bad weights)."""


class CheckpointMismatch(CheckpointError):
    """A checkpoint whose observation keys/shapes or action size differ from the dataset or environment."""


def _as_shape_dtype(value: Any) -> tuple[tuple[int, ...], str]:
    """Accept (shape, dtype) pairs, ArraySpec-like objects (.shape/.dtype) or numpy arrays."""
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return tuple(int(d) for d in value.shape), str(getattr(value.dtype, "name", value.dtype))
    shape, dtype = value
    return tuple(int(d) for d in shape), str(dtype)


@dataclass
class PolicySpec:
    obs_keys: dict[str, tuple[tuple[int, ...], str]]  # observation key -> (per-step shape, dtype name)
    action_dim: int  # size of one action vector
    n_obs: int = 2  # observation history length the policy conditions on
    horizon: int = 16  # length of the predicted action chunk
    n_action_steps: int = 8  # actions the runner executes per chunk, starting at index n_obs - 1

    def __post_init__(self) -> None:
        self.obs_keys = {k: _as_shape_dtype(v) for k, v in self.obs_keys.items()}
        if not 1 <= self.n_obs <= self.horizon:
            raise ValueError(f"need 1 <= n_obs <= horizon, got n_obs={self.n_obs}, horizon={self.horizon}")
        if not 1 <= self.n_action_steps <= self.horizon - self.n_obs + 1:
            raise ValueError(f"n_action_steps={self.n_action_steps} does not fit in horizon={self.horizon} "
                             f"starting at index n_obs-1={self.n_obs - 1}")

    @classmethod
    def from_obs(cls, obs_spec: dict[str, Any], action_dim: int, **kwargs: Any) -> PolicySpec:
        """From a dataset schema's ``obs`` dict (ArraySpec-like values) or (shape, dtype) pairs."""
        return cls({k: _as_shape_dtype(v) for k, v in obs_spec.items()}, int(action_dim), **kwargs)

    # Key groups, sorted so that the network layout never depends on dict order.
    @property
    def rgb_keys(self) -> list[str]:
        return sorted(k for k in self.obs_keys if k.endswith("_rgb"))

    @property
    def depth_keys(self) -> list[str]:
        return sorted(k for k in self.obs_keys if k.endswith("_depth"))

    @property
    def lowdim_keys(self) -> list[str]:
        return sorted(k for k in self.obs_keys if not k.endswith(("_rgb", "_depth")))

    def check_compatible(self, obs_spec: dict[str, Any] | PolicySpec, action_dim: int | None = None) -> None:
        """Raise CheckpointMismatch (one line) unless ``obs_spec`` provides every key this policy needs, same shapes.

        Extra keys in ``obs_spec`` are fine: an environment may offer more than the policy uses.
        """
        if isinstance(obs_spec, PolicySpec):
            action_dim = obs_spec.action_dim if action_dim is None else action_dim
            obs_spec = obs_spec.obs_keys
        given = {k: _as_shape_dtype(v) for k, v in obs_spec.items()}
        missing = [k for k in sorted(self.obs_keys) if k not in given]
        if missing:
            raise CheckpointMismatch(
                f"policy needs observation keys {missing} that the dataset/env lacks (it has {sorted(given)}); "
                f"record them or train a policy on the available keys")
        for key, (shape, dtype) in sorted(self.obs_keys.items()):
            g_shape, g_dtype = given[key]
            if g_shape != shape:
                raise CheckpointMismatch(
                    f"observation '{key}' has shape {g_shape} but the policy was trained on {shape}; "
                    f"resize/reconfigure the source or retrain")
            if (dtype in ("uint8", "uint16")) != (g_dtype in ("uint8", "uint16")) or (
                    dtype in ("uint8", "uint16") and g_dtype != dtype):
                raise CheckpointMismatch(
                    f"observation '{key}' has dtype {g_dtype} but the policy was trained on {dtype}; "
                    f"convert the source or retrain")
        if action_dim is not None and int(action_dim) != self.action_dim:
            raise CheckpointMismatch(
                f"action size {int(action_dim)} differs from the policy's {self.action_dim}; "
                f"use the controller the policy was trained with or retrain")

    def to_json(self) -> dict[str, Any]:
        return {"obs_keys": {k: [list(s), d] for k, (s, d) in self.obs_keys.items()}, "action_dim": self.action_dim,
                "n_obs": self.n_obs, "horizon": self.horizon, "n_action_steps": self.n_action_steps}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PolicySpec:
        obs = {k: (tuple(s), d) for k, (s, d) in data["obs_keys"].items()}
        return cls(obs, int(data["action_dim"]), int(data["n_obs"]), int(data["horizon"]), int(data["n_action_steps"]))

