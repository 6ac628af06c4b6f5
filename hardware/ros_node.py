"""The ROS 2 policy node: robot state and cameras in, safe arm commands out, at one fixed control rate.

    python -m hardware.ros_node --ros-args --params-file hardware/robots/fr3_deploy.yaml -p checkpoint:=<dir>

Design against what hurts deployed learned policies:

* Jitter from work in the control path: one control-rate timer on one persistent single-threaded executor does
  everything: it drains the sensor subscriptions itself (no per-message callbacks between ticks:
  hardware/ros_inputs.py), then staleness, conversion, the safety filter and publishing. The policy plans each
  chunk one tick early on a worker thread (``plan_ahead``), so no tick waits for the network.
* Silent stale sensors: every stream is aged against its own limit by the earlier of its local receipt time and
  its header stamp (``header_stamp_age``; a message delivered late from a backlog is as old as its stamp);
  out-of-order messages (older header stamp) are dropped and counted; a backwards jump of more than a second is a
  clock jump: counted, and the stream then reads as stale, so the node holds and says why.
* Bad input: conversion refuses malformed / NaN / wrong-size messages with a reason; the runner holds and the
  reason goes to ``~/diagnostics``. Commands only come out of :class:`hardware.safety.SafetyFilter`.
* No dry run: ``~/dry_run`` (std_srvs/SetBool) publishes proposed commands on ``~/proposed/*`` and nothing on the
  controller topics; ``~/arm`` (SetBool) arms and disarms; the node starts disarmed unless ``start_armed``.
* A watchdog publishes one hold (the measured pose) after ``safety.watchdog_periods`` periods without a command.
* Operator takeover: while a teleop twist keeps arriving on ``operator_twist_topic`` it drives the arm through the
  same safety filter; when it stops the policy resumes from a fresh history. Every tick's source (policy /
  operator / hold) goes to ``~/provenance``, and with ``record_bag`` the session (state in, commands out,
  provenance) is recorded to rosbag2 off the control thread.
"""

from __future__ import annotations

import functools
import gc
import json
import re
import sys
import time
from collections import Counter, deque
from typing import Any

import numpy as np

from hardware.deploy_config import DeployConfig, DeployConfigError, flatten, from_flat, split_mapping
from hardware.deploy_policy import NumpyPolicy, load_numpy_policy, load_policy
from hardware.kinematics import chain_by_name
from hardware.ros_convert import (MessageError, fill_joint_trajectory, fill_pose, fill_twist, float_array,
                                  gripper_width, image_to_numpy, pose_to_arrays, resize_nearest, sec_to_stamp,
                                  stamp_to_sec)
from hardware.ros_inputs import PolledInputs, ros_type_name
from hardware.runner import Act, Hold, PolicyRunner, RunnerConfig
from hardware.safety import MeasuredState, SafeCommand, Watchdog
from hardware.session_recorder import PROVENANCE_TOPIC

NODE_NAME = "robo_policy_node"
TICK_SECTIONS = ("inputs", "observation", "decision", "publish")  # a control tick's parts, timed for diagnostics
CLOCK_JUMP_S = 1.0  # a header stamp this far behind the previous one is a clock jump, not a reordered message


# --------------------------------------------------------------------------------------------- the node
def _node_base() -> type:
    from rclpy.node import Node

    return Node


class PolicyNode(_node_base()):  # type: ignore[misc]
    def __init__(self, context: Any = None, overrides: dict[str, Any] | None = None):
        from geometry_msgs.msg import PoseStamped, TwistStamped
        from rcl_interfaces.msg import ParameterDescriptor
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
        from sensor_msgs.msg import Image, JointState
        from std_msgs.msg import Float32MultiArray, Float64, String
        from std_srvs.srv import SetBool
        from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

        super().__init__(NODE_NAME, context=context)
        self.config = self._read_parameters(ParameterDescriptor, overrides or {})
        cfg = self.config
        if cfg.cpu_affinity:
            from hardware.ros_spin import pin_process

            pin_process(cfg.cpu_affinity)
        self.policy, self.spec, self.manifest = load_policy(cfg)
        kinematics = chain_by_name(cfg.kinematics)
        wanted = dict(self.spec.obs_keys)
        planner = None  # plan_ahead on a thread of this process
        if cfg.plan_ahead and cfg.planner == "process":
            from hardware.planner import ProcessPlanner

            planner = ProcessPlanner(functools.partial(load_numpy_policy, cfg))
        self.runner = PolicyRunner(
            NumpyPolicy(self.policy, cfg.inference_steps), wanted,
            RunnerConfig(n_obs=self.spec.n_obs, n_action_steps=cfg.n_action_steps or self.spec.n_action_steps,
                         max_obs_age_s=cfg.max_state_age_s, control_dt=cfg.period_s, plan_ahead=cfg.plan_ahead,
                         defer_plan_start=True,
                         stream_max_age_s={split_mapping(e)[0]: cfg.max_image_age_s for e in cfg.image_topics}),
            safety=cfg.safety, kinematics=kinematics, clock=time.monotonic, planner=planner)
        if cfg.plan_ahead and cfg.planner == "thread":
            # The planning thread and the control tick share the GIL; the default 5 ms switch interval would let
            # a plan in progress delay a tick by up to 5 ms.
            sys.setswitchinterval(1e-4)
        self.runner.reseed(cfg.noise_seed)  # before the first arming; the k-th ~/arm true reseeds (noise_seed, k)
        if not cfg.start_armed:
            self.runner.disarm()
        self.watchdog = Watchdog(cfg.period_s, cfg.safety.watchdog_periods)
        self._msgs = (PoseStamped, TwistStamped, JointTrajectory, JointTrajectoryPoint, Float64, String)
        # Latest messages: stream -> (msg, local receipt time); joints merge per name (arm and gripper may
        # arrive in separate JointState messages).
        self._latest: dict[str, tuple[Any, float]] = {}
        self._joints: dict[str, tuple[float, float]] = {}
        self._last_stamp: dict[str, float] = {}
        self.counters: Counter[str] = Counter()
        self.holds: Counter[str] = Counter()
        self.interventions: Counter[str] = Counter()
        self.loop_s: deque[float] = deque(maxlen=2000)
        self.sections_s: deque[tuple[float, float, float, float]] = deque(maxlen=2000)
        self.last_hold = ""
        self._last_tick: float | None = None
        self._last_state: MeasuredState | None = None
        self._hold_sent = False
        self._last_gripper: float | None = None
        self._frame = cfg.base_frame
        self._decided_at = time.time()
        from builtin_interfaces.msg import Time

        self._stamp_cls = Time

        # Best effort matches both best-effort and reliable publishers. Streams the newest message describes keep
        # only that one; joint states keep the sensor depth, because arm and gripper may send separate messages.
        sensor = qos_profile_sensor_data
        newest = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=sensor.reliability,
                            durability=sensor.durability)
        # Drained by the control tick itself, not by callbacks between ticks (hardware/ros_inputs.py).
        self.inputs = PolledInputs(self)
        joint_names = set(cfg.joint_names) | set(cfg.gripper_joint_names)
        self.inputs.add(JointState, cfg.joint_states_topic, sensor, self._on_joints,
                        enough=lambda msgs: joint_names.issubset(n for m in msgs for n in m.name))
        self.inputs.add(PoseStamped, cfg.eef_pose_topic, newest, lambda m, t, b: self._store("eef_pose", m, t, b))
        self._image_keys = {}
        for entry in cfg.image_topics:
            key, topic = split_mapping(entry)
            self._image_keys[key] = topic
            self.inputs.add(Image, topic, newest, lambda m, t, b, k=key: self._store(k, m, t, b))
        self._lowdim_keys = {}
        for entry in cfg.lowdim_topics:
            key, topic = split_mapping(entry)
            self._lowdim_keys[key] = topic
            self.inputs.add(Float32MultiArray, topic, newest,
                            lambda m, t, b, k=key: self._store(k, m, t, b, stamped=False))
        # Operator takeover: a teleop device's twist (and gripper) replaces the policy while it keeps coming.
        self.inputs.add(TwistStamped, cfg.operator_twist_topic, newest,
                        lambda m, t, b: self._store("operator", m, t, b))
        self.inputs.add(Float64, cfg.operator_gripper_topic, newest,
                        lambda m, t, b: self._store("operator_gripper", m, t, b, stamped=False))
        self._operator_active = False
        self.recorder = None
        if cfg.record_bag:
            from hardware.session_recorder import SESSION_TOPIC, SessionRecorder, checkpoint_id, session_description

            self.recorder = SessionRecorder(cfg.record_bag)
            # First in the bag: which topic is which observation key, what the commands mean, which policy ran.
            info = session_description(cfg, checkpoint_id(cfg.checkpoint, self.manifest))
            self.recorder.record(SESSION_TOPIC, "std_msgs/msg/String", String(data=json.dumps(info)), time.time_ns())
        self._provenance = self.create_publisher(String, "~/provenance", 10)
        # Reliable keep-last-1 commands: only the newest matters, but it must not be silently dropped.
        cmd_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE)
        self._pubs: dict[tuple[bool, str], Any] = {}
        kinds = {"pose": (PoseStamped, cfg.target_pose_topic), "twist": (TwistStamped, cfg.twist_topic),
                 "joint_trajectory": (JointTrajectory, cfg.joint_trajectory_topic),
                 "gripper": (Float64, cfg.gripper_topic)}
        for name in (cfg.output, "gripper"):
            msg_type, topic = kinds[name]
            self._pubs[(False, name)] = self.create_publisher(msg_type, topic, cmd_qos)
            self._pubs[(True, name)] = self.create_publisher(msg_type, f"~/proposed/{name}", cmd_qos)
        self._diag = self.create_publisher(String, "~/diagnostics", 10)
        self.create_service(SetBool, "~/arm", self._on_arm)
        self.create_service(SetBool, "~/dry_run", self._on_dry_run)
        self.create_timer(cfg.period_s, self._tick)
        self.create_timer(cfg.diagnostics_period_s, self.publish_diagnostics)
        # Everything loaded so far (torch, the policy, rclpy) lives as long as the node: move it out of the garbage
        # collector's sight, so a full collection in a control tick does not walk hundreds of thousands of objects.
        gc.collect()
        gc.freeze()
        self.get_logger().info(f"{cfg.robot}: {self.policy.kind} policy, {sorted(wanted)} -> {cfg.output} at "
                               f"{cfg.control_hz} Hz ({'armed' if cfg.start_armed else 'disarmed'}"
                               f"{', dry run' if cfg.dry_run else ''})")

    def _read_parameters(self, descriptor_cls: Any, overrides: dict[str, Any]) -> DeployConfig:
        defaults = flatten(DeployConfig())
        values = {}
        for name, default in defaults.items():
            # Dynamic typing: a YAML "0" for a float or [] for a list must not be a type error at start-up.
            param = self.declare_parameter(name, default, descriptor_cls(dynamic_typing=True))
            values[name] = param.value if param.value is not None else default
        given = {k for k in getattr(self, "_parameter_overrides", {}) if k != "use_sim_time"}
        unknown = sorted(given - set(defaults) - set(overrides))
        if unknown:
            raise DeployConfigError(f"unknown parameters {unknown}; see hardware/deploy_config.py")
        values.update(overrides)
        for name, default in defaults.items():  # ROS gives tuples/arrays back: match the dataclass's types
            if isinstance(default, list):
                values[name] = list(values[name])
            elif isinstance(default, float) and isinstance(values[name], int) and not isinstance(values[name], bool):
                values[name] = float(values[name])
        return from_flat(values)

    # ----------------------------------------------------------------------------------------- inputs
    def _accept_stamp(self, stream: str, stamp: float) -> bool:
        previous = self._last_stamp.get(stream)
        if previous is not None and stamp < previous:
            if previous - stamp > CLOCK_JUMP_S:
                self.counters[f"clock_jump:{stream}"] += 1
            else:
                self.counters[f"out_of_order:{stream}"] += 1
                return False
        self._last_stamp[stream] = stamp
        return True

    def _observed_at(self, stamp: float | None, received: float) -> float:
        """When a message's content was observed, on the local monotonic clock: its receipt time, or its header
        stamp if earlier (a message that sat in a DDS backlog is as old as its stamp, not its delivery)."""
        if stamp is None or stamp <= 0 or not self.config.header_stamp_age:
            return received
        return min(received, stamp - (time.time() - time.monotonic()))

    def _store(self, stream: str, msg: Any, received: float, raw: bytes, stamped: bool = True) -> None:
        stamp = stamp_to_sec(msg.header.stamp) if stamped else None
        if stamp is not None and not self._accept_stamp(stream, stamp):
            return
        self._latest[stream] = (msg, self._observed_at(stamp, received))
        if self.recorder is not None:
            self._record(stream, msg, raw)

    def _record(self, stream: str, msg: Any, raw: bytes) -> None:
        """Queue a message the tick used for the session bag, as the CDR bytes it arrived in."""
        topics = {"eef_pose": self.config.eef_pose_topic, "operator": self.config.operator_twist_topic,
                  "operator_gripper": self.config.operator_gripper_topic, "joint_states": self.config.joint_states_topic,
                  **self._image_keys, **self._lowdim_keys}
        topic = topics.get(stream, stream)
        self.recorder.record(topic, getattr(msg, "__msgtype__", "") or ros_type_name(type(msg)), raw, time.time_ns())

    def _on_joints(self, msg: Any, received: float, raw: bytes) -> None:
        stamp = stamp_to_sec(msg.header.stamp)
        if not self._accept_stamp("joint_states:" + ",".join(msg.name[:1]), stamp):
            return
        now = self._observed_at(stamp, received)
        if self.recorder is not None:
            self._record("joint_states", msg, raw)
        if len(msg.position) != len(msg.name):
            self.counters["rejected:joint_states"] += 1
            return
        for name, pos in zip(msg.name, msg.position):
            self._joints[name] = (float(pos), now)

    def _on_arm(self, request: Any, response: Any) -> Any:
        if request.data:
            self.runner.reset()  # fresh history: nothing observed while disarmed leaks into the first chunk
            self.runner.reseed(self.config.noise_seed, self.counters["armings"])  # episode k's noise, as robo eval's
            self.counters["armings"] += 1
            self.runner.arm()
            self._hold_sent = False
        else:
            self.runner.disarm()
        response.success, response.message = True, "armed" if request.data else "disarmed"
        self.get_logger().info(response.message)
        return response

    def _on_dry_run(self, request: Any, response: Any) -> Any:
        self.config.dry_run = bool(request.data)
        response.success, response.message = True, f"dry run {'on' if request.data else 'off'}"
        self.get_logger().info(response.message)
        return response

    # ----------------------------------------------------------------------------------------- control
    def observation(self) -> tuple[dict[str, np.ndarray], dict[str, float], MeasuredState, str]:
        """The current observation, per-stream receipt times, the measured state and its frame; raises
        MessageError naming the stream."""
        cfg = self.config
        obs: dict[str, np.ndarray] = {}
        stamps: dict[str, float] = {}
        names = list(cfg.joint_names) + list(cfg.gripper_joint_names)
        missing = [n for n in names if n not in self._joints]
        if missing:
            raise MessageError(f"no joint state yet for {missing[:3]} on {cfg.joint_states_topic}")
        q = np.array([self._joints[n][0] for n in names])
        if not np.isfinite(q).all():
            raise MessageError(f"joint state on {cfg.joint_states_topic} contains NaN or inf")
        stamps["joint_states"] = min(self._joints[n][1] for n in names)
        obs["joint_pos"] = q[:len(cfg.joint_names)].astype(np.float32)
        if cfg.gripper_joint_names:
            obs["gripper_qpos"] = q[len(cfg.joint_names):].astype(np.float32)
        if "eef_pose" not in self._latest:
            raise MessageError(f"no end-effector pose yet on {cfg.eef_pose_topic}")
        pose_msg, stamps["eef_pose"] = self._latest["eef_pose"]
        pos, quat = pose_to_arrays(pose_msg)
        obs["eef_pos"], obs["eef_quat"] = pos.astype(np.float32), quat.astype(np.float32)
        for key, topic in self._image_keys.items():
            if key not in self._latest:
                raise MessageError(f"no image yet on {topic}")
            msg, stamps[key] = self._latest[key]
            if key not in self.spec.obs_keys:
                continue
            shape = self.spec.obs_keys[key][0]
            image = image_to_numpy(msg)
            if key.endswith("_depth") != (image.dtype == np.uint16):
                raise MessageError(f"{topic} has encoding {msg.encoding}, '{key}' needs "
                                   f"{'16UC1' if key.endswith('_depth') else 'rgb8'}")
            obs[key] = resize_nearest(image, shape[0], shape[1])
        for key, topic in self._lowdim_keys.items():
            if key not in self._latest:
                raise MessageError(f"no message yet on {topic}")
            msg, stamps[key] = self._latest[key]
            if key in self.spec.obs_keys:
                obs[key] = float_array(msg, int(np.prod(self.spec.obs_keys[key][0])))
        state = MeasuredState(pos, quat, q[:len(cfg.joint_names)])
        return obs, stamps, state, cfg.base_frame or pose_msg.header.frame_id

    def _tick(self) -> None:
        start = time.monotonic()
        self._decided_at = time.time()  # commands carry the time they were decided, not when publishing ended
        period = self.config.period_s
        if self._last_tick is not None:
            self.counters["missed_deadlines"] += max(0, int(round((start - self._last_tick) / period)) - 1)
        self._last_tick = start
        self.counters["ticks"] += 1
        self.counters["messages"] += self.inputs.drain()
        drained = observed = time.monotonic()
        try:
            obs, stamps, state, frame = self.observation()
            observed = time.monotonic()
            # The frame travels with the state: a watchdog hold later uses both from the same message.
            self._last_state, self._frame = state, frame
            operator = self._operator_action(start)
            if operator is not None:
                result = self._operator_command(operator, state, stamps, start)
            else:
                result = self.runner.act(obs, now=start, stamp=stamps)
        except MessageError as err:
            result = Hold(str(err))
            self.counters["rejected_messages"] += 1
        decided = time.monotonic()
        source = "operator" if self._operator_active else "policy"
        if isinstance(result, Act) and result.command is not None:
            self._publish(result.command)
            self._publish_provenance(source, result.command.interventions)
            self.watchdog.feed(start)
            self._hold_sent = False
            for name in result.command.interventions:
                self.interventions[name] += 1
        else:
            reason = result.reason if isinstance(result, Hold) else "no command"
            self._on_hold(reason, start)
            self._publish_provenance("hold", (), reason)
        self.runner.start_planning()  # a chunk planned ahead starts now, between this tick and the next
        end = time.monotonic()
        elapsed = end - start
        self.loop_s.append(elapsed)
        # Where the tick's time goes (diagnostics): take and decode inputs, build the observation, policy and
        # safety filter, publish.
        self.sections_s.append((drained - start, observed - drained, decided - observed, end - decided))
        if elapsed > period:
            self.counters["overruns"] += 1

    # ----------------------------------------------------------------------------------------- takeover
    def _operator_action(self, now: float) -> np.ndarray | None:
        """The operator's normalised action while their twist is fresh, else None (and the policy resumes with a
        fresh history: what it saw before the takeover no longer describes the scene)."""
        cfg = self.config
        latest = self._latest.get("operator")
        if latest is None or now - latest[1] > cfg.operator_timeout_s:
            if self._operator_active:
                self._operator_active = False
                self.runner.reset()
                self.get_logger().info("operator released the arm: policy resumes")
            return None
        if not self._operator_active:
            self._operator_active = True
            self.get_logger().info("operator took over")
        t = latest[0].twist
        twist = np.array([t.linear.x, t.linear.y, t.linear.z, t.angular.x, t.angular.y, t.angular.z], dtype=np.float64)
        lim = cfg.safety
        scale = np.array([lim.output_max_pos] * 3 + [lim.output_max_rot] * 3)
        grip = self._latest.get("operator_gripper")
        gripper = float(grip[0].data) if grip is not None else (self._last_gripper or -1.0)
        return np.concatenate([twist * cfg.period_s / scale, [gripper]])  # NaN stays NaN: the filter holds

    def _operator_command(self, action: np.ndarray, state: MeasuredState, stamps: dict[str, float],
                          now: float) -> Act | Hold:
        """The operator's step through the same safety filter as the policy's."""
        self.counters["operator_ticks"] += 1
        result = self.runner.filters[0](action, state, min(stamps.values()), now)
        return result if isinstance(result, Hold) else Act(result.action, result)

    def _publish_provenance(self, source: str, interventions: tuple[str, ...], reason: str = "") -> None:
        if self.recorder is None and not self._provenance.get_subscription_count():
            return  # nobody listens (a `ros2 bag record` that starts later does): asking is cheaper than building it
        String = self._msgs[5]
        record = {"t": self._decided_at, "source": source, "interventions": list(interventions)}
        if reason:
            record["reason"] = reason  # a hold's cause: the importer ends an episode at a disarm
        msg = String(data=json.dumps(record))
        self._provenance.publish(msg)
        if self.recorder is not None:
            self.recorder.record(PROVENANCE_TOPIC, "std_msgs/msg/String", msg, time.time_ns())

    def _on_hold(self, reason: str, now: float) -> None:
        self.holds[re.sub(r"-?\d+(\.\d+)?", "#", reason.split(" (")[0])[:80]] += 1  # counts by kind, not by value
        if reason != self.last_hold:
            self.get_logger().warning(f"holding: {reason}")
        self.last_hold = reason
        self.counters["hold_ticks"] += 1
        flt = self.runner.filters[0]
        if flt.armed and not self._hold_sent and self.watchdog.expired(now) and self._last_state is not None:
            self._publish(flt.hold_command(self._last_state))  # stay at the last measured pose, once
            self._hold_sent = True
            self.counters["watchdog_holds"] += 1

    def _publish(self, cmd: SafeCommand) -> None:
        PoseStamped, TwistStamped, JointTrajectory, JointTrajectoryPoint, Float64, _ = self._msgs
        cfg = self.config
        dry = bool(cfg.dry_run)
        stamp = sec_to_stamp(self._decided_at, self._stamp_cls())
        if cfg.output == "pose":
            msg = fill_pose(PoseStamped(), cmd.target_pos, cmd.target_quat)
            msg.header.stamp, msg.header.frame_id = stamp, self._frame
        elif cfg.output == "twist":
            msg = fill_twist(TwistStamped(), self.runner.filters[0].twist(cmd))
            msg.header.stamp, msg.header.frame_id = stamp, self._frame
        else:
            msg = fill_joint_trajectory(JointTrajectory(), cfg.joint_names, cmd.joint_target,
                                        cfg.trajectory_periods * cfg.period_s, JointTrajectoryPoint)
        self._pubs[(dry, cfg.output)].publish(msg)
        if self.recorder is not None:
            module = type(msg).__module__.split(".")[0]
            self.recorder.record(self._pubs[(dry, cfg.output)].topic_name, f"{module}/msg/{type(msg).__name__}", msg,
                                 time.time_ns())
        # Grippers take discrete commands: send on change (after hysteresis), and once when a run starts.
        if cmd.gripper != self._last_gripper or dry:
            width = gripper_width(cmd.gripper, cfg.gripper_open_width, cfg.gripper_closed_width)
            gripper_msg = Float64(data=width)
            self._pubs[(dry, "gripper")].publish(gripper_msg)
            if self.recorder is not None:  # the session's gripper actions are these latched commands
                self.recorder.record(self._pubs[(dry, "gripper")].topic_name, "std_msgs/msg/Float64", gripper_msg,
                                     time.time_ns())
            self._last_gripper = None if dry else cmd.gripper
        self.counters["proposed" if dry else "commands"] += 1

    # ----------------------------------------------------------------------------------------- diagnostics
    def diagnostics(self) -> dict[str, Any]:
        loop = np.asarray(self.loop_s) * 1e3 if self.loop_s else np.zeros(1)
        sections = np.asarray(self.sections_s) * 1e3 if self.sections_s else np.zeros((1, len(TICK_SECTIONS)))
        plans = np.asarray(self.runner.plan_s) * 1e3 if self.runner.plan_s else np.zeros(1)
        now = time.monotonic()
        ages = {k: round(now - t, 4) for k, (_, t) in self._latest.items()}
        limits = {k: self.config.max_image_age_s if k in self._image_keys else self.config.max_state_age_s for k in ages}
        return {"robot": self.config.robot, "armed": self.runner.filters[0].armed, "dry_run": self.config.dry_run,
                "loop_ms_p50": round(float(np.percentile(loop, 50)), 3),
                "loop_ms_p99": round(float(np.percentile(loop, 99)), 3), "loop_ms_max": round(float(loop.max()), 3),
                "loop_sections_ms_p50": dict(zip(TICK_SECTIONS, np.round(np.percentile(sections, 50, axis=0), 3).tolist())),
                "loop_sections_ms_p99": dict(zip(TICK_SECTIONS, np.round(np.percentile(sections, 99, axis=0), 3).tolist())),
                "superseded_messages": self.inputs.superseded,
                "undecodable_messages": dict(self.inputs.undecodable),
                "stale_streams": sorted(k for k, a in ages.items() if a > limits[k]), "stream_age_s": ages,
                "last_hold": self.last_hold, "holds": dict(self.holds), "interventions": dict(self.interventions),
                "dropped_actions": self.runner.dropped_actions, "late_plans": self.runner.late_plans,
                "plan_failures": self.runner.plan_failures, "planner": self.config.planner if self.config.plan_ahead else "",
                "plan_ms_p50": round(float(np.percentile(plans, 50)), 3),
                "plan_ms_p99": round(float(np.percentile(plans, 99)), 3),
                "operator_active": self._operator_active,
                **({"recorded": self.recorder.written, "record_dropped": self.recorder.dropped,
                    "record_error": self.recorder.error}
                   if self.recorder is not None else {}),
                **dict(self.counters)}

    def publish_diagnostics(self) -> None:
        self._diag.publish(self._msgs[5](data=json.dumps(self.diagnostics())))


def main(argv: list[str] | None = None) -> int:
    from hardware.ros_spin import run_node

    def close(node: PolicyNode) -> None:
        node.runner.close()
        node.inputs.destroy()
        if node.recorder is not None:
            node.recorder.close()

    return run_node(PolicyNode, argv, on_stop=close)


if __name__ == "__main__":
    sys.exit(main())


