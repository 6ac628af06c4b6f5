"""Real-robot side of the stack: cameras, teleop devices, arm interfaces and the real gymnasium-style env.

Only light, dependency-free types are re-exported here. pyrealsense2, rclpy, rosbags, pynput and hidapi are
imported lazily inside the modules/methods that need them, so `import hardware` works without the extras:
    hardware.realsense      RealSenseConfig, RealSenseCamera         (pyrealsense2)
    hardware.realsense_sim  SyntheticRealSense, record_synthetic     (pyrealsense2 software_device)
    hardware.rosbag_camera  RosbagCameraConfig, RosbagCamera         (rosbags)
    hardware.teleop         KeyboardTeleop, SpaceMouseTeleop, ...    (pynput / hidapi at start())
    hardware.ros_arm        RosArmConfig, RosArm                     (rclpy at start())
    hardware.real_env       RealArmEnvConfig, RealArmEnv             (gymnasium)
"""

from hardware.arm import ArmInterface, ArmState, StaleStateError
from hardware.camera import CameraError, CameraFrame, CameraSource

__all__ = ["ArmInterface", "ArmState", "StaleStateError", "CameraError", "CameraFrame", "CameraSource"]
