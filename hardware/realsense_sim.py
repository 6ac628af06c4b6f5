"""A pyrealsense2 `software_device` that looks like a colour+depth RealSense, for tests and dry runs.

It exercises the same librealsense code path as a camera (syncer, rs.align, depth units, recorder), only the
pixels come from Python. Frame i is deterministic so tests can check values end to end:
    colour: R = i % 256, G = column % 256, B = row % 256
    depth:  raw z16 value `depth_base + i` everywhere, in units of `depth_units` metres
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np


@dataclass
class SyntheticRealSenseConfig:
    """Geometry and timing of the synthetic camera."""

    width: int = 64  # pixels; small by default so tests stay fast
    height: int = 48  # pixels
    fps: int = 30  # nominal stream rate advertised by the profiles and used by stream()
    depth_units: float = 0.0001  # metres per raw depth count (D400 default is 0.001; 0.0001 tests the scaling)
    depth_base: int = 5000  # raw depth count of frame 0
    serial: str = "SIM0001"  # reported serial number
    focal_px: float = 50.0  # fx = fy of the pinhole intrinsics


def _add_stream(sensor: Any, rs: Any, cfg: SyntheticRealSenseConfig, kind: str, uid: int) -> Any:
    intr = rs.intrinsics()
    intr.width, intr.height = cfg.width, cfg.height
    intr.ppx, intr.ppy = cfg.width / 2.0, cfg.height / 2.0
    intr.fx = intr.fy = cfg.focal_px
    intr.model = rs.distortion.none
    intr.coeffs = [0.0] * 5
    vs = rs.video_stream()
    vs.type = rs.stream.depth if kind == "depth" else rs.stream.color
    vs.index, vs.uid = 0, uid
    vs.width, vs.height, vs.fps = cfg.width, cfg.height, cfg.fps
    vs.bpp = 2 if kind == "depth" else 3
    vs.fmt = rs.format.z16 if kind == "depth" else rs.format.rgb8
    vs.intrinsics = intr
    return sensor.add_video_stream(vs)


class SyntheticRealSense:
    """Owns an rs.software_device with a "Depth" and a "Color" sensor and pushes synthetic frames into it."""

    def __init__(self, config: Optional[SyntheticRealSenseConfig] = None) -> None:
        import pyrealsense2 as rs

        self.rs = rs
        self.config = cfg = config or SyntheticRealSenseConfig()
        self.device = rs.software_device()
        self.device.register_info(rs.camera_info.name, "Synthetic RealSense")
        self.device.register_info(rs.camera_info.serial_number, cfg.serial)
        self._depth_sensor = self.device.add_sensor("Depth")
        self._color_sensor = self.device.add_sensor("Color")
        self._depth_profile = _add_stream(self._depth_sensor, rs, cfg, "depth", uid=0)
        self._color_profile = _add_stream(self._color_sensor, rs, cfg, "color", uid=1)
        # rs.align and depth_sensor.get_depth_scale() both read this option, exactly as on a real camera.
        self._depth_sensor.add_read_only_option(rs.option.depth_units, cfg.depth_units)
        # Identity extrinsics: the synthetic colour and depth imagers share one optical centre.
        ext = rs.extrinsics()
        ext.rotation = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
        ext.translation = [0.0, 0.0, 0.0]
        self._depth_profile.register_extrinsics_to(self._color_profile, ext)
        self.device.create_matcher(rs.matchers.default)  # timestamp matching, like the D400 default
        self._t0_ms = time.time() * 1000.0
        self._next = 0
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None
        self._streaming = False

    # ------------------------------------------------------------------------------------------------ frames
    def expected_frame(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(rgb uint8 HxWx3, raw depth uint16 HxW) injected as frame i."""
        cfg = self.config
        rgb = np.empty((cfg.height, cfg.width, 3), dtype=np.uint8)
        rgb[..., 0] = i % 256
        rgb[..., 1] = (np.arange(cfg.width) % 256)[None, :]
        rgb[..., 2] = (np.arange(cfg.height) % 256)[:, None]
        depth = np.full((cfg.height, cfg.width), cfg.depth_base + i, dtype=np.uint16)
        return rgb, depth

    def inject(self) -> int:
        """Push the next depth+colour pair (same timestamp) into the device; returns its index."""
        rs, cfg = self.rs, self.config
        with self._lock:
            i = self._next
            self._next += 1
        rgb, depth = self.expected_frame(i)
        stamp_ms = self._t0_ms + i * 1000.0 / cfg.fps
        for sensor, profile, pixels, bpp in (
            (self._depth_sensor, self._depth_profile, depth, 2),
            (self._color_sensor, self._color_profile, rgb, 3),
        ):
            f = rs.software_video_frame()
            f.pixels = pixels
            f.bpp = bpp
            f.stride = bpp * cfg.width
            f.timestamp = stamp_ms
            f.domain = rs.timestamp_domain.global_time
            f.frame_number = i
            f.profile = profile.as_video_stream_profile()
            if bpp == 2:
                f.depth_units = cfg.depth_units
            sensor.on_video_frame(f)
        return i

    def stream(self) -> None:
        """Inject frames at cfg.fps from a background thread until stop_stream() (a live camera stand-in)."""
        if self._streaming:
            return
        self._streaming = True

        def run() -> None:
            period = 1.0 / self.config.fps
            while self._streaming:
                self.inject()
                time.sleep(period)

        self._thread = threading.Thread(target=run, name="synthetic_realsense", daemon=True)
        self._thread.start()

    def stop_stream(self) -> None:
        """Stop injecting: the consumer then sees exactly what a frozen or unplugged camera looks like."""
        self._streaming = False
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None


def record_synthetic(path: str, n_frames: int, config: Optional[SyntheticRealSenseConfig] = None) -> None:
    """Record n_frames synthetic pairs with librealsense's own rs.recorder (writes rosbag2 .db3 in 2.55+).

    The file therefore has exactly the layout `config.enable_device_from_file` expects, which a hand-written
    rosbag could only imitate.
    """
    sim = SyntheticRealSense(config)
    rs = sim.rs
    recorder = rs.recorder(path, sim.device)
    sync = rs.syncer()
    sensors = recorder.query_sensors()
    for s in sensors:
        s.open(s.get_stream_profiles()[0])
        s.start(sync)
    got = 0
    try:
        for _ in range(n_frames):
            sim.inject()
            time.sleep(0.002)  # let the recorder's writer keep up; frames are timestamped, so no real-time wait
        # Drain so every injected frame has passed through the recorder before it is closed.
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            ok, _fs = sync.try_wait_for_frames(100)
            if not ok:
                break
            got += 1
    finally:
        for s in sensors:
            s.stop()
            s.close()
        del sensors, recorder  # the recorder finalises the file when the last reference goes
