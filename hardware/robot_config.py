"""Per-robot YAML: the arm's ROS topics and limits, its cameras, and the episode timing, in one file.

```yaml
arm:      {joint_states_topic: /joint_states, eef_pose_topic: /eef_pose, ...}   # RosArmConfig fields
cameras:  [{name: agentview, serial: "123456", width: 640, height: 480, output_size: [84, 84]}]  # RealSenseConfig
env:      {horizon: 400, control_hz: 20.0, robot_name: Panda}                   # RealArmEnvConfig fields
```
Unknown keys are refused with one line naming them, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hardware.real_env import RealArmEnv, RealArmEnvConfig
from hardware.realsense import RealSenseConfig
from hardware.ros_arm import RosArmConfig

DEFAULT_ROBOT = Path(__file__).parent / "robots" / "panda_real.yaml"


class RobotConfigError(ValueError):
    """The robot YAML is malformed; the message says where."""


@dataclass
class RobotConfig:
    arm: RosArmConfig = field(default_factory=RosArmConfig)  # ROS 2 topics, joint names, limits
    cameras: list[RealSenseConfig] = field(default_factory=list)  # RealSense cameras, keys <name>_rgb/_depth
    env: RealArmEnvConfig = field(default_factory=RealArmEnvConfig)  # horizon and control rate


def _build(cls: type, data: Any, where: str) -> Any:
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise RobotConfigError(f"{where} must be a mapping, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise RobotConfigError(f"{where}: unknown keys {unknown}; valid keys are {sorted(names)}")
    values = dict(data)
    if cls is RealSenseConfig and values.get("output_size") is not None:
        values["output_size"] = tuple(values["output_size"])
    return cls(**values)


def load_robot_config(path: str | Path) -> RobotConfig:
    path = Path(path)
    if not path.exists():
        raise RobotConfigError(f"robot config {path} does not exist; start from {DEFAULT_ROBOT}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise RobotConfigError(f"{path} is not valid YAML ({str(exc).splitlines()[0]})") from None
    unknown = sorted(set(raw) - {"arm", "cameras", "env"})
    if unknown:
        raise RobotConfigError(f"{path}: unknown sections {unknown}; expected arm, cameras, env")
    cameras = raw.get("cameras") or []
    if not isinstance(cameras, list):
        raise RobotConfigError(f"{path}: cameras must be a list")
    return RobotConfig(
        arm=_build(RosArmConfig, raw.get("arm"), f"{path}: arm"),
        cameras=[_build(RealSenseConfig, c, f"{path}: cameras[{i}]") for i, c in enumerate(cameras)],
        env=_build(RealArmEnvConfig, raw.get("env"), f"{path}: env"),
    )


def make_real_env(config: RobotConfig, ready_timeout_s: float = 10.0) -> RealArmEnv:
    """Start the ROS arm and the cameras and wrap them in the env with the sim's observation keys."""
    from hardware.realsense import RealSenseCamera
    from hardware.ros_arm import RosArm

    arm = RosArm(config.arm).start()
    cameras = []
    try:
        arm.wait_until_ready(ready_timeout_s)
        for cam_cfg in config.cameras:
            cameras.append(RealSenseCamera(cam_cfg).start())
    except Exception:
        for cam in cameras:
            cam.stop()
        arm.stop()
        raise
    return RealArmEnv(arm, cameras, config.env)
