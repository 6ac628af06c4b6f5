"""Standard ROS 2 messages <-> numpy, for the policy node and the sim mock (no node, no rclpy state here).

Only standard message types (sensor_msgs, geometry_msgs, trajectory_msgs, std_msgs), so any ROS 2 / DDS peer can
talk to us. Every reader validates what it gets and raises :class:`MessageError` with one line saying what is wrong:
a malformed message must become a hold with a reason, never a command.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


class MessageError(ValueError):
    """A message that cannot be turned into an observation (wrong size, encoding, NaN, missing joints)."""


# ------------------------------------------------------------------------------------------------- time
def stamp_to_sec(stamp: Any) -> float:
    return float(stamp.sec) + float(stamp.nanosec) * 1e-9


def sec_to_stamp(seconds: float, stamp: Any) -> Any:
    """Fill a builtin_interfaces/Time in place (and return it)."""
    sec = math.floor(seconds)
    stamp.sec, stamp.nanosec = sec, min(int(round((seconds - sec) * 1e9)), 999_999_999)
    return stamp


# ------------------------------------------------------------------------------------------------- images
# encoding -> (numpy dtype, channels)
_ENCODINGS = {"rgb8": (np.uint8, 3), "bgr8": (np.uint8, 3), "rgba8": (np.uint8, 4), "bgra8": (np.uint8, 4),
              "mono8": (np.uint8, 1), "16UC1": (np.uint16, 1), "mono16": (np.uint16, 1), "32FC1": (np.float32, 1)}


def image_to_numpy(msg: Any) -> np.ndarray:
    """sensor_msgs/Image -> (H, W, C) array: rgb8/bgr8/rgba8/bgra8 -> uint8 RGB (H, W, 3); 16UC1/mono16 -> uint16
    (H, W, 1) millimetres; 32FC1 depth in metres -> uint16 millimetres. Rows are read through ``msg.step``, which
    may exceed ``width * pixel size`` (row padding); big-endian data is byte-swapped."""
    if msg.encoding not in _ENCODINGS:
        raise MessageError(f"image encoding '{msg.encoding}' is not supported; publish one of {sorted(_ENCODINGS)}")
    dtype, channels = _ENCODINGS[msg.encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    pixel = np.dtype(dtype).itemsize * channels
    if height <= 0 or width <= 0:
        raise MessageError(f"image is {width}x{height}")
    if step < width * pixel:
        raise MessageError(f"image step {step} is smaller than width {width} x {pixel} bytes per pixel")
    data = np.frombuffer(bytes(msg.data) if not isinstance(msg.data, (bytes, np.ndarray)) else msg.data, np.uint8)
    if data.size < step * height:
        raise MessageError(f"image data has {data.size} bytes, {height} rows of step {step} need {step * height}")
    rows = data[:step * height].reshape(height, step)[:, :width * pixel]
    big = bool(msg.is_bigendian) and np.dtype(dtype).itemsize > 1
    array = np.ascontiguousarray(rows).view(np.dtype(dtype).newbyteorder(">" if big else "<"))
    array = array.reshape(height, width, channels).astype(dtype, copy=False)
    if msg.encoding in ("bgr8", "bgra8"):
        array = array[:, :, [2, 1, 0]]
    elif msg.encoding == "rgba8":
        array = array[:, :, :3]
    elif msg.encoding == "32FC1":
        finite = np.where(np.isfinite(array), array, 0.0)
        array = np.clip(np.rint(finite * 1000.0), 0, 65535).astype(np.uint16)
    return np.ascontiguousarray(array)


def numpy_to_image(array: np.ndarray, msg: Any, encoding: str | None = None) -> Any:
    """Fill a sensor_msgs/Image from (H, W, 3) uint8 (rgb8) or (H, W[, 1]) uint16 (16UC1), tightly packed."""
    array = np.ascontiguousarray(array)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if encoding is None:
        encoding = "rgb8" if array.dtype == np.uint8 and array.ndim == 3 else "16UC1"
    msg.height, msg.width = int(array.shape[0]), int(array.shape[1])
    msg.encoding, msg.is_bigendian = encoding, 0
    msg.step = int(array.strides[0])
    msg.data = array.tobytes()
    return msg


def resize_nearest(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize (no filtering: cheap, and depth values stay real measurements)."""
    if image.shape[0] == height and image.shape[1] == width:
        return image
    rows = (np.arange(height) * image.shape[0] / height).astype(int)
    cols = (np.arange(width) * image.shape[1] / width).astype(int)
    return image[rows][:, cols]


# ------------------------------------------------------------------------------------------------- state
def joint_positions(msg: Any, names: list[str]) -> np.ndarray:
    """Positions of ``names`` (in that order) from a sensor_msgs/JointState; refuses missing joints and NaN."""
    if len(msg.position) != len(msg.name):
        raise MessageError(f"JointState has {len(msg.name)} names but {len(msg.position)} positions")
    index = {n: i for i, n in enumerate(msg.name)}
    missing = [n for n in names if n not in index]
    if missing:
        raise MessageError(f"JointState lacks joints {missing}")
    q = np.array([msg.position[index[n]] for n in names], dtype=np.float64)
    if not np.all(np.isfinite(q)):
        raise MessageError("JointState positions contain NaN or inf")
    return q


def pose_to_arrays(msg: Any) -> tuple[np.ndarray, np.ndarray]:
    """geometry_msgs/PoseStamped -> (position (3,), quaternion xyzw (4,)); refuses NaN and non-unit quaternions."""
    p, o = msg.pose.position, msg.pose.orientation
    values = (float(p.x), float(p.y), float(p.z), float(o.x), float(o.y), float(o.z), float(o.w))
    if not all(math.isfinite(v) for v in values):
        raise MessageError("pose contains NaN or inf")
    norm = math.sqrt(sum(v * v for v in values[3:]))  # plain floats: this runs in every control tick
    if abs(norm - 1.0) > 1e-2:
        raise MessageError(f"pose orientation is not a unit quaternion (norm {norm:.3f})")
    return np.array(values[:3]), np.array(values[3:]) / norm


def fill_pose(msg: Any, pos: np.ndarray, quat: np.ndarray) -> Any:
    """Write position and xyzw orientation into a geometry_msgs/PoseStamped in place (and return it)."""
    msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = (float(v) for v in pos)
    o = msg.pose.orientation
    o.x, o.y, o.z, o.w = (float(v) for v in quat)
    return msg


def float_array(msg: Any, size: int) -> np.ndarray:
    """std_msgs/Float32MultiArray (or Float64MultiArray) -> (size,) float32; refuses a wrong size or NaN."""
    data = np.asarray(msg.data, dtype=np.float32)
    if data.shape != (size,):
        raise MessageError(f"array has {data.size} values, expected {size}")
    if not np.all(np.isfinite(data)):
        raise MessageError("array contains NaN or inf")
    return data


# ------------------------------------------------------------------------------------------------- commands
def fill_joint_trajectory(msg: Any, joint_names: list[str], positions: np.ndarray, time_from_start_s: float,
                          point_cls: Any) -> Any:
    """A one-point trajectory_msgs/JointTrajectory reaching ``positions`` after ``time_from_start_s``.

    The header stamp stays zero: joint_trajectory_controller then starts the trajectory on receipt, so a late
    message never makes the controller skip to a point in the past.
    """
    msg.joint_names = list(joint_names)
    point = point_cls()
    point.positions = [float(v) for v in positions]
    secs = int(time_from_start_s)
    point.time_from_start.sec, point.time_from_start.nanosec = secs, int(round((time_from_start_s - secs) * 1e9))
    msg.points = [point]
    return msg


def fill_twist(msg: Any, twist: np.ndarray) -> Any:
    """geometry_msgs/TwistStamped from (vx, vy, vz, wx, wy, wz)."""
    lin, ang = msg.twist.linear, msg.twist.angular
    lin.x, lin.y, lin.z = (float(v) for v in twist[:3])
    ang.x, ang.y, ang.z = (float(v) for v in twist[3:6])
    return msg


def gripper_width(gripper: float, open_width: float, closed_width: float) -> float:
    """Gripper command -1 (open) .. +1 (closed) -> finger opening width in metres."""
    frac = (float(np.clip(gripper, -1.0, 1.0)) + 1.0) / 2.0
    return open_width + frac * (closed_width - open_width)
