"""The RealSense ROS node: a librealsense recording (.db3) played through RealSenseCamera comes out as rgb8 and
16UC1 sensor_msgs/Image over real DDS, pixel for pixel; when the recording ends nothing more is published."""

import threading
import time

import numpy as np
import pytest

rs = pytest.importorskip("pyrealsense2")

from hardware.realsense_sim import SyntheticRealSense, SyntheticRealSenseConfig, record_synthetic  # noqa: E402
from hardware.ros_convert import image_to_numpy  # noqa: E402

W, H = 64, 48


def _context():
    import rclpy
    from rclpy.signals import SignalHandlerOptions

    ctx = rclpy.Context()
    rclpy.init(context=ctx, signal_handler_options=SignalHandlerOptions.NO)
    return ctx


@pytest.mark.ros
def test_recorded_frames_arrive_as_ros_images(tmp_path):
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    from hardware.realsense_node import RealSenseNode

    path = tmp_path / "synthetic.db3"
    record_synthetic(str(path), n_frames=8, config=SyntheticRealSenseConfig(width=W, height=H, depth_units=0.001))
    expected = SyntheticRealSense(SyntheticRealSenseConfig(width=W, height=H))
    cam_ctx, sub_ctx = _context(), _context()
    # Real-time playback (30 fps, like a camera): best-effort image QoS keeps only the newest frames, so a burst
    # as fast as the file reads would be dropped by design.
    node = RealSenseNode(context=cam_ctx, overrides={"playback_file": str(path), "frame_timeout_ms": 400,
                                                     "playback_real_time": True, "width": W, "height": H})
    listener = rclpy.create_node("image_listener", context=sub_ctx)
    color, depth = [], []
    listener.create_subscription(Image, "/camera/camera/color/image_raw", color.append, qos_profile_sensor_data)
    listener.create_subscription(Image, "/camera/camera/aligned_depth_to_color/image_raw", depth.append,
                                 qos_profile_sensor_data)
    executors = []
    for ctx, n in ((cam_ctx, node), (sub_ctx, listener)):
        ex = SingleThreadedExecutor(context=ctx)
        ex.add_node(n)
        threading.Thread(target=ex.spin, daemon=True).start()
        executors.append(ex)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (
                node._color_pub.get_subscription_count() and node._depth_pub.get_subscription_count()
                and listener.count_publishers("/camera/camera/color/image_raw")
                and listener.count_publishers("/camera/camera/aligned_depth_to_color/image_raw")):
            time.sleep(0.05)  # frames published before discovery completes (both ways) would be lost
        time.sleep(0.2)
        node.start()
        deadline = time.monotonic() + 20
        while not node.last_error and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        assert "end of recording" in node.last_error
        assert node.published >= 5 and len(color) == node.published and len(depth) == node.published
        for c, d in zip(color, depth):
            assert (c.encoding, d.encoding, c.header.stamp) == ("rgb8", "16UC1", d.header.stamp)
            rgb = image_to_numpy(c)
            index = int(rgb[0, 0, 0])
            want_rgb, want_depth = expected.expected_frame(index)
            np.testing.assert_array_equal(rgb, want_rgb)
            got = image_to_numpy(d)[:, :, 0]
            filled = got != 0  # alignment leaves a border row unfilled, as on a real camera
            assert filled.mean() > 0.9
            np.testing.assert_array_equal(got[filled], want_depth[filled])
        count = node.published
        time.sleep(0.5)
        assert node.published == count  # the camera stopped: nothing is invented
    finally:
        node.stop()
        for ex in executors:
            ex.shutdown()
        node.destroy_node()
        listener.destroy_node()
        rclpy.try_shutdown(context=cam_ctx)
        rclpy.try_shutdown(context=sub_ctx)
