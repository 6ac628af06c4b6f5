"""Replay RealSense *ROS driver* recordings (ros2 bag, sensor_msgs/Image topics) as a CameraSource.

This complements RealSenseCamera's playback: librealsense's own recordings (rs.recorder, realsense-viewer) use
a /device_0/... topic layout that only pyrealsense2 reads, while a robot running realsense-ros records
`/camera/camera/color/image_raw` (rgb8) and `/camera/camera/aligned_depth_to_color/image_raw` (16UC1, mm)
with `ros2 bag record`. Pure Python through `rosbags`; no rclpy needed.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from hardware.camera import CameraError, CameraFrame, resize_nearest


@dataclass
class RosbagCameraConfig:
    """Which bag and topics to replay."""

    path: str  # rosbag2 directory (with metadata.yaml) or a single .db3/.mcap file
    color_topic: str = "/camera/camera/color/image_raw"  # sensor_msgs/Image, rgb8/bgr8/rgba8/bgra8
    depth_topic: Optional[str] = "/camera/camera/aligned_depth_to_color/image_raw"  # 16UC1 mm or 32FC1 m; None = no depth
    name: str = "agentview"  # observation key prefix
    output_size: Optional[tuple[int, int]] = None  # (H, W) nearest resize; None keeps the recorded size
    max_sync_skew_s: float = 0.02  # colour frames without a depth frame this close in header time are skipped


def _stamp(msg: Any) -> float:
    return msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9


def image_to_array(msg: Any) -> np.ndarray:
    """sensor_msgs/Image -> (H, W, C) array, honouring `step` (rows may be padded beyond width*pixel size)."""
    enc = msg.encoding.lower()
    layouts = {"rgb8": (np.uint8, 3), "bgr8": (np.uint8, 3), "rgba8": (np.uint8, 4), "bgra8": (np.uint8, 4),
               "mono8": (np.uint8, 1), "8uc1": (np.uint8, 1), "16uc1": (np.uint16, 1), "mono16": (np.uint16, 1),
               "32fc1": (np.float32, 1)}
    if enc not in layouts:
        raise CameraError(f"unsupported image encoding '{msg.encoding}'")
    dtype, ch = layouts[enc]
    dt = np.dtype(dtype).newbyteorder(">" if msg.is_bigendian else "<")
    row_bytes = msg.width * ch * dt.itemsize
    data = np.frombuffer(bytes(msg.data), dtype=np.uint8)
    if msg.step < row_bytes or data.size < msg.step * msg.height:
        raise CameraError(f"image step {msg.step} / size {data.size} too small for {msg.width}x{msg.height} {msg.encoding}")
    rows = data[: msg.step * msg.height].reshape(msg.height, msg.step)[:, :row_bytes]
    img = np.ascontiguousarray(rows).view(dt).reshape(msg.height, msg.width, ch).astype(dtype)
    if enc.startswith("bgr"):
        img = img[..., [2, 1, 0] + ([3] if ch == 4 else [])]
    return img


class RosbagCamera:
    """start() loads the bag's image messages; read() returns colour/depth pairs in order, then CameraError."""

    def __init__(self, config: RosbagCameraConfig) -> None:
        self.config = config
        self.name = config.name
        self._color: list[Any] = []
        self._depth: list[Any] = []
        self._depth_t: list[float] = []
        self._i = 0
        self._hw: Optional[tuple[int, int]] = None

    @property
    def has_depth(self) -> bool:
        return self.config.depth_topic is not None

    @property
    def image_shape(self) -> tuple[int, int]:
        if self.config.output_size is not None:
            return tuple(self.config.output_size)  # type: ignore[return-value]
        if self._hw is None:
            raise CameraError(f"camera '{self.name}': image size unknown before start()")
        return self._hw

    def start(self) -> "RosbagCamera":
        from rosbags.highlevel import AnyReader  # lazy: optional extra

        cfg = self.config
        path = Path(cfg.path)
        if not path.exists():
            raise CameraError(f"camera '{cfg.name}': bag not found: {cfg.path}")
        topics = {cfg.color_topic} | ({cfg.depth_topic} if cfg.depth_topic else set())
        # Loading everything up front is fine for demo-length bags and makes pairing by timestamp trivial.
        with AnyReader([path if path.is_dir() else path.parent]) as reader:
            conns = [c for c in reader.connections if c.topic in topics]
            missing = topics - {c.topic for c in conns}
            if missing:
                raise CameraError(f"camera '{cfg.name}': topics {sorted(missing)} not in {cfg.path}")
            for conn, _t, raw in reader.messages(connections=conns):
                msg = reader.deserialize(raw, conn.msgtype)
                (self._color if conn.topic == cfg.color_topic else self._depth).append(msg)
        self._color.sort(key=_stamp)
        self._depth.sort(key=_stamp)
        self._depth_t = [_stamp(m) for m in self._depth]
        if not self._color:
            raise CameraError(f"camera '{cfg.name}': no messages on {cfg.color_topic}")
        self._hw = (int(self._color[0].height), int(self._color[0].width))
        self._i = 0
        return self

    def _nearest_depth(self, t: float) -> Optional[Any]:
        j = bisect.bisect_left(self._depth_t, t)
        best = min((k for k in (j - 1, j) if 0 <= k < len(self._depth_t)), key=lambda k: abs(self._depth_t[k] - t), default=None)
        if best is None or abs(self._depth_t[best] - t) > self.config.max_sync_skew_s:
            return None
        return self._depth[best]

    def read(self) -> CameraFrame:
        cfg = self.config
        while self._i < len(self._color):
            cmsg = self._color[self._i]
            self._i += 1
            t = _stamp(cmsg)
            depth_mm = None
            if cfg.depth_topic is not None:
                dmsg = self._nearest_depth(t)
                if dmsg is None:
                    continue  # no depth close enough in time: skip rather than pair mismatched images
                d = image_to_array(dmsg)
                if d.dtype == np.float32:  # 32FC1 is metres; NaN = no return
                    d = np.clip(np.nan_to_num(d * 1000.0, nan=0.0), 0, 65535).round().astype(np.uint16)
                depth_mm = d
            rgb = image_to_array(cmsg)[..., :3]
            if rgb.shape[2] != 3:
                raise CameraError(f"camera '{cfg.name}': colour topic has encoding '{cmsg.encoding}', need 3 channels")
            if cfg.output_size is not None:
                rgb = resize_nearest(rgb, cfg.output_size)
                depth_mm = resize_nearest(depth_mm, cfg.output_size) if depth_mm is not None else None
            return CameraFrame(stamp_s=t, rgb=np.ascontiguousarray(rgb), depth_mm=depth_mm)
        raise CameraError(f"camera '{cfg.name}': end of recording {cfg.path}")

    def stop(self) -> None:
        self._color, self._depth, self._depth_t = [], [], []
