"""Per-key affine normalisation fitted from data and stored inside every checkpoint.

A checkpoint without its normaliser would drive a "blind" policy, so the statistics travel with the weights as
plain JSON (no pickles) and loading refuses a checkpoint that lacks them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

Mode = Literal["limits", "gaussian", "image", "depth"]
DEPTH_RANGE_MM = 4000.0  # depth images (uint16 mm) map [0, 4 m] to [-1, 1]; farther is clipped by the encoder
_MIN_RANGE = 1e-4  # a dimension that never moves (e.g. a fixed joint) is centred, not blown up


@dataclass
class KeyStats:
    """normalised = raw * scale + offset, elementwise over the per-step shape (broadcast over leading axes)."""

    scale: np.ndarray
    offset: np.ndarray
    mode: Mode

    def to_json(self) -> dict[str, Any]:
        return {"scale": self.scale.tolist(), "offset": self.offset.tolist(), "mode": self.mode}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> KeyStats:
        return cls(np.asarray(data["scale"], np.float32), np.asarray(data["offset"], np.float32), data["mode"])


@dataclass
class Normalizer:
    stats: dict[str, KeyStats] = field(default_factory=dict)

    @classmethod
    def fit(cls, data: dict[str, np.ndarray], modes: dict[str, Mode] | None = None) -> Normalizer:
        """Fit from arrays with a leading sample axis. Default mode: ``image`` for uint8 HxWxC, else ``limits``.

        ``limits`` maps each dimension's [min, max] to [-1, 1] (what diffusion models with clipped samples need);
        ``gaussian`` to zero mean, unit std; ``image`` maps uint8 [0, 255] to [-1, 1] per channel; ``depth``
        maps uint16 millimetres [0, DEPTH_RANGE_MM] to [-1, 1]. Image modes need only one sample.
        """
        modes = modes or {}
        stats = {}
        for key, values in data.items():
            values = np.asarray(values)
            mode = modes.get(key) or _default_mode(values)
            if mode in ("image", "depth"):
                channels = values.shape[-1]
                top = 255.0 if mode == "image" else DEPTH_RANGE_MM
                scale, offset = np.full(channels, 2.0 / top), np.full(channels, -1.0)
            elif mode == "limits":
                lo, hi = values.min(axis=0).astype(np.float64), values.max(axis=0).astype(np.float64)
                span = hi - lo
                flat = span < _MIN_RANGE
                scale = np.where(flat, 1.0, 2.0 / np.where(flat, 1.0, span))
                offset = np.where(flat, -lo, -1.0 - lo * scale)
            elif mode == "gaussian":
                mean, std = values.mean(axis=0), values.std(axis=0)
                scale = 1.0 / np.maximum(std, _MIN_RANGE)
                offset = -mean * scale
            else:
                raise ValueError(f"unknown normalisation mode '{mode}' for '{key}'")
            stats[key] = KeyStats(np.asarray(scale, np.float32), np.asarray(offset, np.float32), mode)
        return cls(stats)

    def _get(self, key: str) -> KeyStats:
        if key not in self.stats:
            raise KeyError(f"normaliser has no statistics for '{key}' (it has {sorted(self.stats)})")
        return self.stats[key]

    def normalize(self, key: str, value: Any) -> Any:
        """Works on numpy arrays and torch tensors (the stats are moved to the tensor's device)."""
        s = self._get(key)
        scale, offset = _like(s.scale, value), _like(s.offset, value)
        return value * scale + offset

    def unnormalize(self, key: str, value: Any) -> Any:
        s = self._get(key)
        scale, offset = _like(s.scale, value), _like(s.offset, value)
        return (value - offset) / scale

    def to_json(self) -> dict[str, Any]:
        return {k: v.to_json() for k, v in self.stats.items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Normalizer:
        return cls({k: KeyStats.from_json(v) for k, v in data.items()})


def _default_mode(values: np.ndarray) -> Mode:
    if values.ndim == 4 and values.dtype == np.uint8:
        return "image"
    if values.ndim == 4 and values.dtype == np.uint16:
        return "depth"
    return "limits"


def _like(stat: np.ndarray, value: Any) -> Any:
    if isinstance(value, np.ndarray) or np.isscalar(value):
        return stat
    import torch  # only reached with tensors

    return torch.as_tensor(stat, dtype=value.dtype if value.is_floating_point() else torch.float32, device=value.device)
