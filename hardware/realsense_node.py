"""A RealSense camera node on pyrealsense2, for setups without realsense-ros: aligned RGB + depth as standard
sensor_msgs/Image under realsense-ros's topic names, so the policy node (and any ROS tool) reads it unchanged.

    python -m hardware.realsense_node --ros-args -p serial:="'123456789'" -p width:=640 -p height:=480

Frames come from :class:`hardware.realsense.RealSenseCamera` (live camera, ``software_device`` in tests, or a recorded
``.db3`` through ``playback_file``) on a reader thread, because ``read()`` blocks until the next frameset; the
executor thread only serves ROS. Images are stamped with the local clock at arrival (the device clock is another
time base). When the camera stops delivering, nothing is published: subscribers see the stream go stale, which is
what the policy node holds on; the reason is logged once and the reader keeps trying.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
from dataclasses import dataclass
from typing import Any

from hardware.camera import CameraError
from hardware.realsense import RealSenseCamera, RealSenseConfig
from hardware.ros_convert import numpy_to_image

NODE_NAME = "robo_realsense"


@dataclass
class RealSenseNodeConfig:
    """ROS parameters of the camera node (the camera's own settings are RealSenseConfig's)."""

    color_topic: str = "/camera/camera/color/image_raw"  # rgb8, realsense-ros's name
    depth_topic: str = "/camera/camera/aligned_depth_to_color/image_raw"  # 16UC1 millimetres, aligned to colour
    frame_id: str = "camera_color_optical_frame"  # header.frame_id of both images


def _node_base() -> type:
    from rclpy.node import Node

    return Node


class RealSenseNode(_node_base()):  # type: ignore[misc]
    def __init__(self, context: Any = None, device: Any = None, overrides: dict[str, Any] | None = None):
        from rcl_interfaces.msg import ParameterDescriptor
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import Image

        super().__init__(NODE_NAME, context=context)
        values: dict[str, Any] = {}
        for cls in (RealSenseConfig, RealSenseNodeConfig):
            for f in dataclasses.fields(cls):
                if f.name in ("output_size", "name"):
                    continue  # the policy node resizes; the observation key is the policy node's business
                default = getattr(cls(), f.name)
                param = self.declare_parameter(f.name, "" if default is None else default,
                                               ParameterDescriptor(dynamic_typing=True))
                values[f.name] = param.value
        values.update(overrides or {})
        node_names = {f.name for f in dataclasses.fields(RealSenseNodeConfig)}
        self.node_config = RealSenseNodeConfig(**{k: v for k, v in values.items() if k in node_names})
        camera_values = {k: (None if v == "" else v) for k, v in values.items() if k not in node_names}
        if camera_values.get("serial") is not None:
            camera_values["serial"] = str(camera_values["serial"])
        self.camera = RealSenseCamera(RealSenseConfig(**camera_values), device=device)
        self._Image = Image
        self._color_pub = self.create_publisher(Image, self.node_config.color_topic, qos_profile_sensor_data)
        self._depth_pub = self.create_publisher(Image, self.node_config.depth_topic, qos_profile_sensor_data)
        self.published = 0
        self.last_error = ""
        self._running = False
        self._thread: threading.Thread | None = None

    def start(self) -> RealSenseNode:
        self.camera.start()
        self._running = True
        self._thread = threading.Thread(target=self._read_loop, name="realsense_reader", daemon=True)
        self._thread.start()
        return self

    def _read_loop(self) -> None:
        while self._running:
            try:
                frame = self.camera.read()
            except CameraError as err:
                if str(err) != self.last_error:
                    self.get_logger().warning(f"no frames: {err}")
                self.last_error = str(err)
                continue
            stamp = self.get_clock().now().to_msg()
            color = numpy_to_image(frame.rgb, self._Image(), "rgb8")
            color.header.stamp, color.header.frame_id = stamp, self.node_config.frame_id
            self._color_pub.publish(color)
            if frame.depth_mm is not None:
                depth = numpy_to_image(frame.depth_mm, self._Image(), "16UC1")
                depth.header.stamp, depth.header.frame_id = stamp, self.node_config.frame_id
                self._depth_pub.publish(depth)
            self.published += 1

    def stop(self) -> None:
        self._running = False
        if self._thread is not None:
            self._thread.join(timeout=3)
        self.camera.stop()


def main(argv: list[str] | None = None) -> int:
    from hardware.ros_spin import run_node

    status = run_node(lambda: RealSenseNode().start(), argv, on_stop=lambda node: node.stop())
    # pyrealsense2 and rclpy both loaded: their native libraries' static destructors crash at interpreter exit
    # (SIGSEGV). Everything is stopped and shut down by now, so leave without running them.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    sys.exit(main())
