"""Operator takeover from a SpaceMouse or the keyboard: a ROS 2 node that turns ``hardware.teleop`` device samples
into the policy node's operator topics (geometry_msgs/TwistStamped + std_msgs/Float64 gripper).

    python -m hardware.teleop_node --ros-args -p device:=spacemouse

The device's action means what it means during recording: a normalised delta per control step (robosuite OSC
scale), so the twist is ``action * output_max / control_dt`` and the policy node's conversion back gives the same
action. The node publishes only while the operator is active (a moving axis, or for ``hold_s`` after the last
motion or gripper toggle); when it goes quiet the policy node hands the arm back to the policy.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from hardware.teleop import KeyboardConfig, KeyboardTeleop, SpaceMouseTeleop, TeleopDevice

NODE_NAME = "robo_teleop"


@dataclass
class TeleopNodeConfig:
    """ROS parameters of the teleop bridge."""

    device: str = "spacemouse"  # spacemouse or keyboard
    rate_hz: float = 50.0  # how often the device is sampled and the twist published while active
    control_hz: float = 20.0  # the policy node's control rate (the period an action's delta spans)
    output_max_pos: float = 0.05  # metres per step for a unit action (must match the policy node's safety limits)
    output_max_rot: float = 0.5  # radians per step for a unit action
    hold_s: float = 0.5  # keep control this long after the last motion or gripper change (then hand back)
    twist_topic: str = "/operator/twist"
    gripper_topic: str = "/operator/gripper"
    frame_id: str = ""  # frame of the twist (the robot's base frame); "" leaves it empty


def _node_base() -> type:
    from rclpy.node import Node

    return Node


class TeleopNode(_node_base()):  # type: ignore[misc]
    def __init__(self, context: Any = None, device: TeleopDevice | None = None,
                 overrides: dict[str, Any] | None = None):
        from geometry_msgs.msg import TwistStamped
        from rcl_interfaces.msg import ParameterDescriptor
        from std_msgs.msg import Float64

        super().__init__(NODE_NAME, context=context)
        values = {f.name: self.declare_parameter(f.name, getattr(TeleopNodeConfig(), f.name),
                                                 ParameterDescriptor(dynamic_typing=True)).value
                  for f in dataclasses.fields(TeleopNodeConfig)}
        values.update(overrides or {})
        self.config = cfg = TeleopNodeConfig(**values)
        if device is None:
            if cfg.device not in ("spacemouse", "keyboard"):
                raise ValueError(f"device '{cfg.device}' is not spacemouse or keyboard")
            device = SpaceMouseTeleop() if cfg.device == "spacemouse" else KeyboardTeleop(KeyboardConfig())
        self.device = device
        self.device.start()
        self._Twist, self._Float64 = TwistStamped, Float64
        self._twist_pub = self.create_publisher(TwistStamped, cfg.twist_topic, 10)
        self._gripper_pub = self.create_publisher(Float64, cfg.gripper_topic, 10)
        self._scale = np.array([cfg.output_max_pos] * 3 + [cfg.output_max_rot] * 3) * cfg.control_hz
        self._active_until = 0.0
        self._last_gripper: float | None = None
        self.published = 0
        self.create_timer(1.0 / cfg.rate_hz, self._tick)

    def _tick(self) -> None:
        action = np.asarray(self.device.read().action, dtype=np.float64)
        now = time.monotonic()
        gripper = float(action[6])
        if np.any(action[:6] != 0) or (self._last_gripper is not None and gripper != self._last_gripper):
            self._active_until = now + self.config.hold_s
        self._last_gripper = gripper
        if now > self._active_until:
            return  # quiet: the policy has the arm
        msg = self._Twist()
        msg.header.stamp, msg.header.frame_id = self.get_clock().now().to_msg(), self.config.frame_id
        twist = action[:6] * self._scale  # m/s, rad/s
        lin, ang = msg.twist.linear, msg.twist.angular
        lin.x, lin.y, lin.z = (float(v) for v in twist[:3])
        ang.x, ang.y, ang.z = (float(v) for v in twist[3:])
        self._gripper_pub.publish(self._Float64(data=gripper))
        self._twist_pub.publish(msg)
        self.published += 1

    def destroy_node(self) -> None:
        self.device.stop()
        super().destroy_node()


def main(argv: list[str] | None = None) -> int:
    from hardware.ros_spin import run_node

    return run_node(TeleopNode, argv)  # TeleopError (no device / no display) is a RuntimeError: one line


if __name__ == "__main__":
    sys.exit(main())
