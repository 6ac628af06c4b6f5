"""Intel RealSense colour+depth camera through pyrealsense2, producing `CameraFrame`s in the obs contract.

Three sources share one processing path (frameset -> rs.align to colour -> mm depth -> optional resize):
  * a connected camera (optionally chosen by serial) through rs.pipeline;
  * a recording through rs.pipeline + config.enable_device_from_file. pyrealsense2 2.55+ records and plays
    rosbag2 SQLite files (.db3); ROS1 .bag files must first be converted with rs.context().convert_bag_to_db3;
  * any rs.device passed in directly (e.g. hardware.realsense_sim's software_device). In 2.59 a
    software_device added to a context with add_to() is not listed by query_devices(), so rs.pipeline cannot
    open it; its sensors are started into an rs.syncer instead, which is the same synchronisation the
    pipeline uses internally.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from hardware.camera import CameraError, CameraFrame, resize_nearest


@dataclass
class RealSenseConfig:
    """Stream selection and post-processing for one RealSense camera."""

    serial: Optional[str] = None  # device serial to open; None = first camera found
    width: int = 640  # colour/depth stream width requested from the device
    height: int = 480  # colour/depth stream height requested from the device
    fps: int = 30  # stream rate requested from the device
    enable_depth: bool = True  # also stream depth (z16) and emit depth_mm
    align_depth_to_color: bool = True  # reproject depth into the colour camera so pixels correspond
    name: str = "agentview"  # observation key prefix: <name>_rgb, <name>_depth
    output_size: Optional[tuple[int, int]] = None  # (H, W) to resize to (nearest); None keeps the stream size
    playback_file: Optional[str] = None  # recorded .db3 to play instead of a live camera
    playback_real_time: bool = False  # False: every recorded frame is delivered, as fast as read() asks
    frame_timeout_ms: int = 1000  # read() raises CameraError if no complete new frameset arrives in this time


def _frame_to_array(frame: Any, dtype: type, channels: int) -> np.ndarray:
    """Copy a video frame into a packed (H, W, C) array, honouring the row stride (rows may be padded)."""
    h, w = frame.get_height(), frame.get_width()
    stride = frame.get_stride_in_bytes()
    itemsize = np.dtype(dtype).itemsize
    raw = np.frombuffer(frame.get_data(), dtype=np.uint8, count=stride * h).reshape(h, stride)
    row = raw[:, : w * channels * itemsize]
    return np.ascontiguousarray(row).view(dtype).reshape(h, w, channels).copy()


class RealSenseCamera:
    """start() / read() -> CameraFrame / stop(); also a context manager."""

    def __init__(self, config: Optional[RealSenseConfig] = None, device: Any = None) -> None:
        self.config = config or RealSenseConfig()
        self.name = self.config.name
        self._device = device  # an rs.device to stream from directly (software_device); None = pipeline
        self._pipeline: Any = None
        self._syncer: Any = None
        self._sensors: list[Any] = []
        self._align: Any = None
        self._depth_scale_m = 0.001
        self._stream_hw: Optional[tuple[int, int]] = None
        self._last_number: Optional[int] = None

    # ------------------------------------------------------------------------------------------- properties
    @property
    def has_depth(self) -> bool:
        return self.config.enable_depth

    @property
    def image_shape(self) -> tuple[int, int]:
        if self.config.output_size is not None:
            return tuple(self.config.output_size)  # type: ignore[return-value]
        return self._stream_hw or (self.config.height, self.config.width)

    @property
    def depth_scale_m(self) -> float:
        """Metres per raw depth count, as reported by the device (0.001 on most D400 presets)."""
        return self._depth_scale_m

    # ------------------------------------------------------------------------------------------- lifecycle
    def start(self) -> "RealSenseCamera":
        import pyrealsense2 as rs  # lazy: `import hardware` must not need the realsense extra

        cfg = self.config
        if self._device is not None:
            self._start_device(rs)
        else:
            self._start_pipeline(rs)
        self._align = rs.align(rs.stream.color) if (cfg.enable_depth and cfg.align_depth_to_color) else None
        self._last_number = None
        return self

    def _start_pipeline(self, rs: Any) -> None:
        cfg = self.config
        rs_cfg = rs.config()
        if cfg.playback_file is not None:
            if not os.path.isfile(cfg.playback_file):
                raise CameraError(f"camera '{cfg.name}': recording not found: {cfg.playback_file}")
            # Recorded streams are fixed; asking for other sizes would make resolve() fail.
            rs_cfg.enable_device_from_file(cfg.playback_file, repeat_playback=False)
        else:
            # Check presence first: pipeline.start() would otherwise wait ~15 s for a device before failing.
            serials = [d.get_info(rs.camera_info.serial_number) for d in rs.context().query_devices()]
            if not serials or (cfg.serial and cfg.serial not in serials):
                want = f"serial {cfg.serial}" if cfg.serial else "any RealSense"
                raise CameraError(f"camera '{cfg.name}': {want} not connected (found: {serials or 'none'}); check USB3 cable and udev rules")
            if cfg.serial:
                rs_cfg.enable_device(cfg.serial)
            rs_cfg.enable_stream(rs.stream.color, cfg.width, cfg.height, rs.format.rgb8, cfg.fps)
            if cfg.enable_depth:
                rs_cfg.enable_stream(rs.stream.depth, cfg.width, cfg.height, rs.format.z16, cfg.fps)
        pipeline = rs.pipeline()
        try:
            profile = pipeline.start(rs_cfg)
        except RuntimeError as e:
            which = cfg.playback_file or (f"serial {cfg.serial}" if cfg.serial else "any serial")
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CameraError(f"camera '{cfg.name}': cannot start RealSense ({which}): {msg}") from None
        self._pipeline = pipeline
        dev = profile.get_device()
        if cfg.playback_file is not None:
            dev.as_playback().set_real_time(cfg.playback_real_time)
        if cfg.enable_depth:
            self._depth_scale_m = float(dev.first_depth_sensor().get_depth_scale())
        color = profile.get_stream(rs.stream.color).as_video_stream_profile()
        self._stream_hw = (color.height(), color.width())

    def _start_device(self, rs: Any) -> None:
        cfg = self.config
        wanted = {rs.stream.color: rs.format.rgb8}
        if cfg.enable_depth:
            wanted[rs.stream.depth] = rs.format.z16
        self._syncer = rs.syncer()
        for sensor in self._device.query_sensors():
            for p in sensor.get_stream_profiles():
                vp = p.as_video_stream_profile()
                if (
                    p.stream_type() in wanted
                    and p.format() == wanted[p.stream_type()]
                    and (vp.width(), vp.height(), p.fps()) == (cfg.width, cfg.height, cfg.fps)
                ):
                    sensor.open(p)
                    sensor.start(self._syncer)
                    self._sensors.append(sensor)
                    wanted.pop(p.stream_type())
                    break
        if wanted:
            self.stop()
            raise CameraError(
                f"camera '{cfg.name}': device has no {cfg.width}x{cfg.height}@{cfg.fps} stream for {sorted(str(s) for s in wanted)}"
            )
        if cfg.enable_depth:
            self._depth_scale_m = float(self._device.first_depth_sensor().get_depth_scale())
        self._stream_hw = (cfg.height, cfg.width)

    def stop(self) -> None:
        if self._pipeline is not None:
            try:
                self._pipeline.stop()
            except RuntimeError:
                pass  # already stopped (e.g. playback reached its end)
            self._pipeline = None
        for sensor in self._sensors:
            sensor.stop()
            sensor.close()
        self._sensors = []
        self._syncer = None

    def __enter__(self) -> "RealSenseCamera":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------------------------------------ reading
    def _wait(self, timeout_ms: int) -> tuple[bool, Any]:
        if self._pipeline is not None:
            return self._pipeline.try_wait_for_frames(timeout_ms)
        if self._syncer is not None:
            return self._syncer.try_wait_for_frames(timeout_ms)
        raise CameraError(f"camera '{self.config.name}': read() before start()")

    def read(self) -> CameraFrame:
        """Next complete, new frameset; CameraError after frame_timeout_ms without one (stale/unplugged/EOF)."""
        cfg = self.config
        deadline = time.monotonic() + cfg.frame_timeout_ms / 1000.0
        while True:
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0:
                break
            ok, fs = self._wait(remaining_ms)
            if not ok:
                break
            color = fs.get_color_frame()
            # Framesets can be partial while streams start up or if one sensor lags; skip rather than emit
            # a colour image with no depth (or vice versa).
            if not color or (cfg.enable_depth and not fs.get_depth_frame()):
                continue
            number = color.get_frame_number()
            if number == self._last_number:  # same frames re-delivered: not new information
                continue
            self._last_number = number
            return self._convert(fs)
        src = cfg.playback_file or cfg.serial or "camera"
        raise CameraError(f"camera '{cfg.name}' ({src}): no new frame within {cfg.frame_timeout_ms} ms (stale stream, unplugged, or end of recording)")

    def _convert(self, fs: Any) -> CameraFrame:
        cfg = self.config
        if self._align is not None:
            fs = self._align.process(fs)
        color = fs.get_color_frame()
        rgb = _frame_to_array(color, np.uint8, 3)
        fmt = color.get_profile().format()
        if str(fmt).endswith("bgr8"):  # recordings made by other tools may store BGR
            rgb = rgb[..., ::-1].copy()
        depth_mm = None
        if cfg.enable_depth:
            raw = _frame_to_array(fs.get_depth_frame(), np.uint16, 1)
            if abs(self._depth_scale_m - 0.001) < 1e-9:
                depth_mm = raw  # already millimetres: skip the float round trip
            else:
                mm = np.rint(raw.astype(np.float64) * (self._depth_scale_m * 1000.0))
                depth_mm = np.clip(mm, 0, np.iinfo(np.uint16).max).astype(np.uint16)
        if cfg.output_size is not None:
            rgb = resize_nearest(rgb, cfg.output_size)
            depth_mm = resize_nearest(depth_mm, cfg.output_size) if depth_mm is not None else None
        return CameraFrame(stamp_s=fs.get_timestamp() / 1000.0, rgb=rgb, depth_mm=depth_mm)
