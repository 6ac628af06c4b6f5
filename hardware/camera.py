"""Camera-agnostic types shared by every image source (RealSense, rosbag replay, test fakes).

Kept free of pyrealsense2/rclpy imports so that `RealArmEnv` and tests can use cameras without the extras.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol, runtime_checkable

import numpy as np


class CameraError(RuntimeError):
    """A camera could not deliver a frame (not found, stale stream, end of recording)."""


@dataclass(frozen=True)
class CameraFrame:
    """One synchronised colour(+depth) sample."""

    stamp_s: float  # capture time in seconds (device/global clock for RealSense, header stamp for rosbag)
    rgb: np.ndarray  # (H, W, 3) uint8, RGB channel order
    depth_mm: Optional[np.ndarray]  # (H, W, 1) uint16 millimetres, aligned to rgb; None when depth is disabled

    def __post_init__(self) -> None:
        # Validate here once so that every consumer (env, recorder) can trust shapes and dtypes.
        if self.rgb.dtype != np.uint8 or self.rgb.ndim != 3 or self.rgb.shape[2] != 3:
            raise ValueError(f"rgb must be (H,W,3) uint8, got {self.rgb.shape} {self.rgb.dtype}")
        if self.depth_mm is not None:
            if self.depth_mm.dtype != np.uint16 or self.depth_mm.shape != self.rgb.shape[:2] + (1,):
                raise ValueError(
                    f"depth_mm must be {self.rgb.shape[:2] + (1,)} uint16, got {self.depth_mm.shape} {self.depth_mm.dtype}"
                )


@runtime_checkable
class CameraSource(Protocol):
    """Anything `RealArmEnv` can pull images from."""

    name: str  # observation key prefix, e.g. "agentview" -> agentview_rgb / agentview_depth

    def start(self) -> None: ...

    def read(self) -> CameraFrame: ...

    def stop(self) -> None: ...

    @property
    def image_shape(self) -> tuple[int, int]:
        """(H, W) of the frames read() returns; known before the first frame so spaces can be built."""
        ...

    @property
    def has_depth(self) -> bool: ...


def resize_nearest(img: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize that works for uint8 RGB and uint16 depth alike.

    Nearest (not bilinear) on purpose: interpolating depth across an object edge invents surfaces that exist
    nowhere in the scene, and it keeps the dependency list at numpy only.
    """
    h, w = hw
    src_h, src_w = img.shape[:2]
    if (src_h, src_w) == (h, w):
        return img
    rows = np.minimum((np.arange(h) + 0.5) * src_h / h, src_h - 1).astype(np.intp)
    cols = np.minimum((np.arange(w) + 0.5) * src_w / w, src_w - 1).astype(np.intp)
    return np.ascontiguousarray(img[rows][:, cols])
