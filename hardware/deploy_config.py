"""The policy node's parameters: one typed dataclass, read from a ROS 2 parameter file per robot.

The per-robot files in ``hardware/robots/*_deploy.yaml`` use the standard ROS 2 layout (``/**: ros__parameters:``)
so ``ros2 launch`` and ``--params-file`` read them unchanged; the safety limits sit in a nested ``safety:`` map
(ROS parameters ``safety.workspace_low`` ...). Unknown keys are refused with one line, so a typo never silently
falls back to a default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hardware.safety import SafetyLimits

ROBOTS = Path(__file__).parent / "robots"
OUTPUTS = ("pose", "joint_trajectory", "twist")
PLANNERS = ("process", "thread")


class DeployConfigError(ValueError):
    """A deploy parameter file or parameter that cannot be used; the message says which and why."""


def _panda_joints() -> list[str]:
    return [f"panda_joint{i}" for i in range(1, 8)]


def _panda_fingers() -> list[str]:
    return ["panda_finger_joint1", "panda_finger_joint2"]


@dataclass
class DeployConfig:
    """Everything the policy node reads; each field is a ROS parameter of the same name."""

    checkpoint: str = ""  # checkpoint directory or deploy artifact directory (with artifact.json)
    robot: str = "panda"  # a label for logs and diagnostics
    control_hz: float = 20.0  # rate of the one control timer; the policy's training rate
    output: str = "pose"  # command interface: pose (Cartesian impedance), joint_trajectory, twist (MoveIt Servo)
    joint_states_topic: str = "/joint_states"  # sensor_msgs/JointState (arm and gripper may come separately)
    joint_names: list[str] = field(default_factory=_panda_joints)  # arm joints in observation order
    gripper_joint_names: list[str] = field(default_factory=_panda_fingers)  # finger joints -> gripper_qpos
    eef_pose_topic: str = "/eef_pose"  # geometry_msgs/PoseStamped, measured end-effector pose in the base frame
    image_topics: list[str] = field(default_factory=list)  # "agentview_rgb=/camera/.../image_raw" (rgb8 or 16UC1)
    lowdim_topics: list[str] = field(default_factory=list)  # "object_state=/object_state" (std_msgs/Float32MultiArray)
    target_pose_topic: str = "/cartesian_impedance_controller/target_pose"  # output=pose: PoseStamped targets
    joint_trajectory_topic: str = "/joint_trajectory_controller/joint_trajectory"  # output=joint_trajectory
    twist_topic: str = "/servo_node/delta_twist_cmds"  # output=twist: TwistStamped for MoveIt Servo
    gripper_topic: str = "/gripper/width_command"  # std_msgs/Float64 finger width (m), published on change
    gripper_open_width: float = 0.08  # width for gripper -1 (open)
    gripper_closed_width: float = 0.0  # width for gripper +1 (closed)
    base_frame: str = ""  # frame_id of commands; "" copies the measured pose's frame_id
    kinematics: str = "franka"  # DH model for joint limits / joint targets: franka, ur5e, none
    max_state_age_s: float = 0.1  # joint states, pose and low-dim topics older than this (receipt time) -> hold
    max_image_age_s: float = 0.2  # images older than this -> hold (cameras run slower than the arm)
    header_stamp_age: bool = True  # age streams by the earlier of receipt time and header stamp (catches messages
    #   delivered late from a DDS backlog); needs the senders' clocks synced (chrony/PTP). False: receipt time only
    trajectory_periods: float = 2.0  # output=joint_trajectory: time_from_start = this many control periods
    inference_steps: int = 0  # network calls per chunk for denoising policies; 0 = the policy's default
    n_action_steps: int = 0  # actions executed per chunk; 0 = the checkpoint's value
    plan_ahead: bool = True  # plan each chunk one tick early, off the control thread: no control tick waits for
    #   the network (hardware/runner.py); `robo eval` scores exactly this schedule by default
    planner: str = "process"  # where plans ahead run: process (a child process: inference never shares the
    #   interpreter lock with the tick, the lower p99 in docs/benchmarks.md) or thread (a worker thread of the node,
    #   no second copy of torch and the weights); hardware/planner.py
    noise_seed: int = 0  # the policy's sampling noise restarts from (noise_seed, k) at the k-th ~/arm true (k = 0, 1,
    #   ...), as `robo eval --seed noise_seed` restarts it for its episode k (one env): a session replays exactly, and
    #   a run over DDS draws the noise its evaluation drew. Before the first arming: (noise_seed)
    start_armed: bool = False  # False: commands start only after the ~/arm service (true on real robots)
    dry_run: bool = False  # shadow mode: publish proposed commands on ~/proposed/* and execute nothing
    diagnostics_period_s: float = 0.5  # how often ~/diagnostics is published
    operator_twist_topic: str = "/operator/twist"  # TwistStamped (m/s, rad/s, base frame): while fresh, it drives
    operator_gripper_topic: str = "/operator/gripper"  # Float64 -1 open .. +1 close, used while the operator drives
    operator_timeout_s: float = 0.2  # the operator holds the arm while its twist is this fresh; then the policy resumes
    torch_threads: int = 1  # intra-op threads of the policy (node and planner process alike): the one-step
    #   policy's small layers gain nothing from more, and idle OpenMP workers spinning on the cores the control
    #   loop and the drivers need cost jitter; 0 = torch's default (one per core)
    cpu_affinity: list[int] = field(default_factory=list)  # pin the node (all its threads) to these CPUs, e.g.
    #   an isolated core of its own (hardware/ros_spin.py: pin_process); [] = wherever the OS schedules it
    record_bag: str = ""  # rosbag2 directory to record the session (state, commands, per-tick provenance); "" = off
    safety: SafetyLimits = field(default_factory=SafetyLimits)  # the filter's limits (nested `safety:` map)

    def validate(self) -> None:
        if self.output not in OUTPUTS:
            raise DeployConfigError(f"output '{self.output}' is not one of {OUTPUTS}")
        if self.planner not in PLANNERS:
            raise DeployConfigError(f"planner '{self.planner}' is not one of {PLANNERS}")
        if self.noise_seed < 0:
            raise DeployConfigError(f"noise_seed must be 0 or more, got {self.noise_seed}")
        if self.torch_threads < 0:
            raise DeployConfigError(f"torch_threads must be 0 (torch's default) or more, got {self.torch_threads}")
        if self.control_hz <= 0:
            raise DeployConfigError(f"control_hz must be positive, got {self.control_hz}")
        if abs(self.safety.control_dt - 1.0 / self.control_hz) > 1e-6:
            # The joint velocity limits are integrated over control_dt: a stale value would scale them wrongly.
            raise DeployConfigError(f"safety.control_dt {self.safety.control_dt} s does not match control_hz "
                                    f"{self.control_hz} ({1.0 / self.control_hz:.4g} s); set both")
        if self.output == "joint_trajectory" and self.kinematics in ("", "none"):
            raise DeployConfigError("output=joint_trajectory needs a kinematic model (kinematics: franka or ur5e)")
        if len(self.joint_names) != len(self.safety.joint_lower):
            raise DeployConfigError(f"{len(self.joint_names)} joint_names but safety limits for "
                                    f"{len(self.safety.joint_lower)} joints")
        for entry in list(self.image_topics) + list(self.lowdim_topics):
            split_mapping(entry)

    @property
    def period_s(self) -> float:
        return 1.0 / self.control_hz


def split_mapping(entry: str) -> tuple[str, str]:
    """'key=/topic' -> ('key', '/topic')."""
    key, sep, topic = str(entry).partition("=")
    if not sep or not key.strip() or not topic.strip().startswith("/"):
        raise DeployConfigError(f"topic mapping '{entry}' must look like 'observation_key=/topic'")
    return key.strip(), topic.strip()


def flatten(config: DeployConfig) -> dict[str, Any]:
    """Parameter name -> value, with the safety limits as ``safety.<field>`` (lists, not tuples: ROS types)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name == "safety":
            for s in dataclasses.fields(value):
                v = getattr(value, s.name)
                out[f"safety.{s.name}"] = [float(x) for x in v] if isinstance(v, tuple) else v
        else:
            out[f.name] = list(value) if isinstance(value, list) else value
    return out


def from_flat(values: dict[str, Any], where: str = "parameters") -> DeployConfig:
    """Build a DeployConfig from parameter name -> value (unknown names refused in one line)."""
    names = {f.name for f in dataclasses.fields(DeployConfig)} - {"safety"}
    safety_names = {f.name for f in dataclasses.fields(SafetyLimits)}
    top, safety = {}, {}
    unknown = []
    for name, value in values.items():
        if name.startswith("safety."):
            key = name[len("safety."):]
            (safety.__setitem__(key, value) if key in safety_names else unknown.append(name))
        elif name in names:
            top[name] = value
        else:
            unknown.append(name)
    if unknown:
        raise DeployConfigError(f"{where}: unknown parameters {sorted(unknown)}; see hardware/deploy_config.py")
    try:
        config = DeployConfig(**top, safety=SafetyLimits(**safety))
    except (TypeError, ValueError) as err:
        raise DeployConfigError(f"{where}: {err}") from None
    config.validate()
    return config


def _flatten_yaml(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flatten_yaml(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def read_params_file(path: str | Path, node_name: str = "robo_policy_node") -> dict[str, Any]:
    """Flat parameters for ``node_name`` from a ROS 2 parameter file (``/**`` entries, then the node's own)."""
    path = Path(path)
    if not path.is_file():
        raise DeployConfigError(f"parameter file {path} does not exist; start from {ROBOTS / 'panda_deploy.yaml'}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise DeployConfigError(f"{path} is not valid YAML ({str(exc).splitlines()[0]})") from None
    flat: dict[str, Any] = {}
    for name in ("/**", node_name, f"/{node_name}"):
        section = raw.get(name)
        if section is None:
            continue
        if not isinstance(section, dict) or not isinstance(section.get("ros__parameters"), dict):
            raise DeployConfigError(f"{path}: '{name}' needs a 'ros__parameters' mapping")
        flat.update(_flatten_yaml(section["ros__parameters"]))
    if not flat:
        raise DeployConfigError(f"{path}: no '/**' or '{node_name}' section with ros__parameters")
    return flat


def load_deploy_config(path: str | Path, overrides: dict[str, Any] | None = None) -> DeployConfig:
    """The DeployConfig a node started with ``--params-file path`` (and ``-p`` overrides) would run."""
    return from_flat({**read_params_file(path), **(overrides or {})}, where=str(path))
