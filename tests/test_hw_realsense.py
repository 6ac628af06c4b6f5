"""RealSenseCamera through librealsense itself: a software_device for live frames, rs.recorder for .db3 files."""

from __future__ import annotations

import time

import numpy as np
import pytest

rs = pytest.importorskip("pyrealsense2")

from hardware.camera import CameraError, CameraFrame, CameraSource, resize_nearest  # noqa: E402
from hardware.realsense import RealSenseCamera, RealSenseConfig  # noqa: E402
from hardware.realsense_sim import SyntheticRealSense, SyntheticRealSenseConfig, record_synthetic  # noqa: E402

W, H = 64, 48


def sim_camera(units: float = 0.0001, **cfg_kw) -> tuple[SyntheticRealSense, RealSenseCamera]:
    sim = SyntheticRealSense(SyntheticRealSenseConfig(width=W, height=H, depth_units=units))
    cfg = RealSenseConfig(width=W, height=H, fps=30, frame_timeout_ms=400, **cfg_kw)
    return sim, RealSenseCamera(cfg, device=sim.device)


def check_frame_matches(sim: SyntheticRealSense, frame: CameraFrame, units: float, aligned: bool = True) -> int:
    """The frame must be one injected pair, colour and depth from the same index; returns that index."""
    i = int(frame.rgb[0, 0, 0])  # R channel carries the frame index
    rgb, raw = sim.expected_frame(i)
    np.testing.assert_array_equal(frame.rgb, rgb)
    # librealsense stores depth units as float32; expected values use the same number the device reports
    # (0.1 mm units put every 5th frame exactly on a .5 rounding boundary).
    expected_mm = np.rint(raw.astype(np.float64) * float(np.float32(units)) * 1000.0).astype(np.uint16)
    depth = frame.depth_mm[..., 0]
    if aligned:
        # rs.align reprojects depth pixel by pixel; pixels that no depth pixel lands on (here one border row)
        # stay 0, exactly as on a real camera. Everything that was filled must carry the right value.
        filled = depth != 0
        assert filled.mean() > 0.9
        np.testing.assert_array_equal(depth[filled], expected_mm[filled])
    else:
        np.testing.assert_array_equal(depth, expected_mm)
    return i


@pytest.mark.parametrize("units,aligned", [(0.0001, True), (0.001, True), (0.0001, False)])
def test_software_device_frames_shapes_and_mm(units, aligned):
    sim, cam = sim_camera(units, align_depth_to_color=aligned)
    with cam:
        assert isinstance(cam, CameraSource)
        assert cam.depth_scale_m == pytest.approx(units)
        sim.stream()
        try:
            seen = []
            for _ in range(5):
                f = cam.read()
                assert f.rgb.shape == (H, W, 3) and f.rgb.dtype == np.uint8
                assert f.depth_mm.shape == (H, W, 1) and f.depth_mm.dtype == np.uint16
                seen.append((check_frame_matches(sim, f, units, aligned), f.stamp_s))
        finally:
            sim.stop_stream()
    idx, stamps = zip(*seen)
    assert list(idx) == sorted(set(idx)), "frames must be new and in order"
    assert all(b > a for a, b in zip(stamps, stamps[1:]))
    # 5001 counts * 0.1 mm = 500.1 mm -> 500; a wrong scale (e.g. treating counts as mm) would give 5001.
    if units == 0.0001:
        assert 500 <= int(f.depth_mm[0, 0, 0]) <= 501


def test_stale_stream_raises_one_line_camera_error():
    sim, cam = sim_camera()
    with cam:
        sim.stream()
        cam.read()
        sim.stop_stream()
        t0 = time.monotonic()
        with pytest.raises(CameraError, match="no new frame within 400 ms") as err:
            # Frames already queued may still arrive; the stream is stale once they are consumed.
            for _ in range(20):
                cam.read()
        assert time.monotonic() - t0 < 3.0
        assert "\n" not in str(err.value)


def test_output_resize_and_no_depth():
    sim, cam = sim_camera(output_size=(24, 32), enable_depth=False)
    with cam:
        assert cam.image_shape == (24, 32) and not cam.has_depth
        sim.stream()
        try:
            f = cam.read()
        finally:
            sim.stop_stream()
    assert f.rgb.shape == (24, 32, 3) and f.depth_mm is None
    np.testing.assert_array_equal(f.rgb[0, :, 1], np.arange(1, 64, 2))  # nearest picks column 2j+1


def test_db3_recording_plays_back_through_pipeline(tmp_path):
    path = tmp_path / "synthetic.db3"
    record_synthetic(str(path), n_frames=8, config=SyntheticRealSenseConfig(width=W, height=H, depth_units=0.0001))
    assert path.stat().st_size > 0
    sim = SyntheticRealSense(SyntheticRealSenseConfig(width=W, height=H))  # only for expected_frame()
    cam = RealSenseCamera(RealSenseConfig(playback_file=str(path), frame_timeout_ms=500))
    frames = []
    with cam:
        assert cam.image_shape == (H, W)
        assert cam.depth_scale_m == pytest.approx(0.0001)  # the depth unit travels inside the recording
        with pytest.raises(CameraError, match="end of recording"):
            while True:
                frames.append(cam.read())
    idx = [check_frame_matches(sim, f, 0.0001) for f in frames]
    # All 8 pairs are in the file, but at playback start librealsense's syncer can emit the first one or two
    # frames unpaired (colour before its depth); read() skips partial sets, so the head may be missing.
    assert len(frames) >= 5 and idx == list(range(idx[0], 8))


def test_missing_recording_and_missing_camera_errors(tmp_path):
    with pytest.raises(CameraError, match="recording not found"):
        RealSenseCamera(RealSenseConfig(playback_file=str(tmp_path / "nope.db3"))).start()
    with pytest.raises(CameraError, match="serial 000000000000 not connected") as err:
        RealSenseCamera(RealSenseConfig(serial="000000000000")).start()  # no camera with this serial
    assert "\n" not in str(err.value)


def test_device_without_requested_stream():
    sim, _ = sim_camera()
    cam = RealSenseCamera(RealSenseConfig(width=640, height=480), device=sim.device)
    with pytest.raises(CameraError, match="no 640x480@30 stream"):
        cam.start()


def test_resize_nearest_keeps_dtype_and_values():
    depth = np.arange(12, dtype=np.uint16).reshape(3, 4, 1)
    out = resize_nearest(depth, (6, 8))
    assert out.dtype == np.uint16 and out.shape == (6, 8, 1)
    assert set(np.unique(out)) <= set(np.unique(depth))  # nearest never invents depths


# -------------------------------------------------------------------------------- realsense-ros bag replay (.db3)
def write_ros_bag(path, n: int, skip_depth: int = -1, pad: int = 4) -> None:
    """rosbag2 .db3 with realsense-ros topics; rows padded by `pad` bytes so `step` != width*bpp."""
    rosbags = pytest.importorskip("rosbags")  # noqa: F841
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_HUMBLE)
    Image, Header, Time = ts.types["sensor_msgs/msg/Image"], ts.types["std_msgs/msg/Header"], ts.types["builtin_interfaces/msg/Time"]

    def image(i: int, enc: str, arr: np.ndarray) -> object:
        h, w = arr.shape[:2]
        row = arr.reshape(h, -1).view(np.uint8)
        padded = np.zeros((h, row.shape[1] + pad), np.uint8)
        padded[:, : row.shape[1]] = row
        stamp = Time(sec=100 + i // 10, nanosec=(i % 10) * 100_000_000)
        return Image(header=Header(stamp=stamp, frame_id="cam"), height=h, width=w, encoding=enc, is_bigendian=0,
                     step=row.shape[1] + pad, data=padded.reshape(-1))

    with Writer(path, version=8) as w:
        c = w.add_connection("/camera/camera/color/image_raw", "sensor_msgs/msg/Image", typestore=ts)
        d = w.add_connection("/camera/camera/aligned_depth_to_color/image_raw", "sensor_msgs/msg/Image", typestore=ts)
        for i in range(n):
            t_ns = (100 + i * 0.1) * 1e9
            rgb = np.zeros((6, 5, 3), np.uint8)
            rgb[..., 0], rgb[..., 1] = i, np.arange(5)[None, :]
            bgr = np.ascontiguousarray(rgb[..., ::-1]) if i % 2 else rgb  # odd frames stored as bgr8
            w.write(c, int(t_ns), ts.serialize_cdr(image(i, "bgr8" if i % 2 else "rgb8", bgr), "sensor_msgs/msg/Image"))
            if i != skip_depth:
                depth = np.full((6, 5), 700 + i, np.uint16)
                w.write(d, int(t_ns), ts.serialize_cdr(image(i, "16UC1", depth), "sensor_msgs/msg/Image"))


def test_rosbag_camera_replays_realsense_ros_topics(tmp_path):
    from hardware.rosbag_camera import RosbagCamera, RosbagCameraConfig

    bag = tmp_path / "demo"
    write_ros_bag(bag, n=5, skip_depth=2)
    cam = RosbagCamera(RosbagCameraConfig(path=str(bag)))
    cam.start()
    assert cam.image_shape == (6, 5) and cam.has_depth and isinstance(cam, CameraSource)
    frames = []
    with pytest.raises(CameraError, match="end of recording"):
        while True:
            frames.append(cam.read())
    assert [int(f.rgb[0, 0, 0]) for f in frames] == [0, 1, 3, 4]  # frame 2 had no depth: skipped, not mispaired
    for f in frames:
        i = int(f.rgb[0, 0, 0])
        np.testing.assert_array_equal(f.rgb[0, :, 1], np.arange(5))  # step padding stripped, bgr8 converted
        assert f.depth_mm.shape == (6, 5, 1) and np.all(f.depth_mm == 700 + i)
        assert f.stamp_s == pytest.approx(100 + i * 0.1)


def test_rosbag_camera_missing_topic(tmp_path):
    from hardware.rosbag_camera import RosbagCamera, RosbagCameraConfig

    bag = tmp_path / "demo"
    write_ros_bag(bag, n=1)
    with pytest.raises(CameraError, match="not in"):
        RosbagCamera(RosbagCameraConfig(path=str(bag), depth_topic="/camera/depth/nope")).start()
