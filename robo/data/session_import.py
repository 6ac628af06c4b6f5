"""Import a recorded deployment session (rosbag2, ``record_bag`` of the policy node) into the Zarr store, so the
operator's corrections feed the next round of training (HG-DAgger style).

The bag (``hardware/session_recorder.py``) holds the node's configuration once (``/robo_policy_node/session``),
the state messages its control ticks used, the operator's twist, the commands it sent and one provenance message
per control tick. The provenance messages are the clock: each tick that sent a command becomes one dataset step, with

* the observation the node acted on: the newest state message of every stream recorded before the tick's command
  (the control tick takes its inputs and records them before it acts, so these are exactly the messages it had);
* the action the arm executed, in the training action space: the command taken back through the sim mock's
  ``command_to_action`` from the measured pose it was integrated from (so a command 1 cm above the pose is
  z = 0.2), and the latched gripper command (-1 open, +1 close);
* ``data/intervention`` (the operator drove this step, not the policy) and ``data/safety_filtered`` (the safety
  filter changed the command); episode records carry the same as ranges in ``extra``.

Ticks that sent no decision are not steps: holds (stale or malformed state, disarmed, the watchdog's hold at the
measured pose), and dry-run ticks whose commands went to ``~/proposed`` and were never executed. They are counted
per episode. A disarm, a dry-run stretch, a ``/sim/episode`` marker or a pause longer than ``max_gap_s`` ends an
episode.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal

import numpy as np

from robo.data.schema import ACTION_KEY, ArraySpec, DatasetError, DatasetSchema, EpisodeInfo
from robo.data.store import ZarrDataset

log = logging.getLogger(__name__)

INTERVENTION_KEY = "intervention"  # bool per step: the operator's command, not the policy's
FILTERED_KEY = "safety_filtered"  # bool per step: the safety filter changed the command that was sent
STEP_ARRAYS = {INTERVENTION_KEY: ArraySpec((), "bool"), FILTERED_KEY: ArraySpec((), "bool")}
EPISODE_MARKER = "/sim/episode"  # the sim mock's end-of-episode report (JSON with success), when it was recorded


@dataclass
class SessionImportConfig:
    """How to turn a session bag into dataset episodes."""

    task: str = "Lift"  # task name to record (an append checks it against the dataset's)
    params_file: Path | None = None  # the node's ROS parameter file, for a bag without a session record (older node)
    obs_keys: tuple[str, ...] = ()  # observation keys to keep (e.g. to match a dataset); empty = every recorded stream
    image_size: int = 0  # resize camera images to this square size (nearest neighbour); 0 = as recorded
    max_gap_s: float = 1.0  # a pause this long between commanded ticks starts a new episode
    step_arrays: bool = True  # store data/intervention and data/safety_filtered; off: only the per-episode ranges
    zarr_format: int | None = None  # new dataset's zarr format (default 3); an append keeps the store's own
    compression: Literal["lz4", "zstd", "none"] = "zstd"  # new dataset's compression


@dataclass
class SessionReport:
    """What an import did (totals over every episode written)."""

    output: Path
    episodes: int = 0
    steps: int = 0
    operator_steps: int = 0
    skipped: Counter[str] = field(default_factory=Counter)  # ticks that are not steps, by why

    def summary(self) -> str:
        skipped = ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items())) or "none"
        return (f"imported {self.episodes} episodes ({self.steps} steps, {self.operator_steps} by the operator) into "
                f"{self.output}; ticks skipped: {skipped}")


# ---------------------------------------------------------------------------------------------- the bag
def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [""])[0]


class _Bag:
    """A rosbag2 directory read through rosbags: connections by topic, typed messages in time order."""

    def __init__(self, path: Path, reader: Any):
        from rosbags.typesys import Stores, get_typestore

        self.path, self._reader = path, reader
        self._typestore = get_typestore(Stores.LATEST)  # what the recorder serialised against
        self.topics: dict[str, list[Any]] = {}
        self.undecodable: Counter[str] = Counter()  # damaged messages per topic, left out of the walk
        for conn in reader.connections:
            self.topics.setdefault(conn.topic, []).append(conn)

    def count(self, topic: str) -> int:
        return sum(c.msgcount for c in self.topics.get(topic, []))

    def msgtype(self, topic: str) -> str:
        return self.topics[topic][0].msgtype

    def decode(self, raw: bytes, msgtype: str) -> Any:
        from rosbags.serde import SerdeError

        try:
            return self._typestore.deserialize_cdr(raw, msgtype)
        except SerdeError:
            # rclpy's serialize_message (what the recorder writes) can leave a few bytes past the end of a message;
            # CDR readers (ros2 bag play) ignore them, rosbags' strict check does not. Decode without that check.
            msgdef = self._typestore.get_msgdef(msgtype)
            decode = msgdef.deserialize_cdr_le if raw[1] else msgdef.deserialize_cdr_be
            return decode(memoryview(raw)[4:], 0, msgdef.cls, self._typestore)[0]

    def first(self, topic: str) -> Any | None:
        for conn, _, raw in self._reader.messages(connections=self.topics.get(topic, [])):
            try:
                return self.decode(raw, conn.msgtype)
            except Exception as exc:  # noqa: BLE001 - rosbags raises struct / serde errors for a damaged message
                raise DatasetError(f"{self.path}: the first {conn.msgtype} on {topic} cannot be decoded "
                                   f"({type(exc).__name__}); the bag is damaged") from None
        return None

    def messages(self, topics: set[str]) -> Iterator[tuple[str, int, Any]]:
        """(topic, receipt ns, message) in time order; a message that cannot be decoded is counted and left out."""
        conns = [c for t in topics for c in self.topics.get(t, [])]
        for conn, stamp_ns, raw in self._reader.messages(connections=conns):
            try:
                msg = self.decode(raw, conn.msgtype)
            except Exception:  # noqa: BLE001 - one damaged message must not lose the session
                self.undecodable[conn.topic] += 1
                continue
            yield conn.topic, stamp_ns, msg


@contextlib.contextmanager
def _open_bag(path: Path) -> Iterator[_Bag]:
    from rosbags.rosbag2 import Reader

    if not path.exists():
        raise DatasetError(f"{path} does not exist; pass the directory the node recorded with record_bag")
    try:
        reader = Reader(path)
        reader.open()
    except Exception as exc:  # noqa: BLE001 - rosbags raises several types for a path that is not a bag
        raise DatasetError(f"{path} is not a rosbag2 recording ({type(exc).__name__}: {_first_line(exc)})") from None
    try:
        yield _Bag(path, reader)
    finally:
        reader.close()


def _session_record(bag: _Bag, params_file: Path | None) -> dict[str, Any]:
    """The node's configuration: its own record in the bag, else the parameter file it ran with."""
    from hardware.session_recorder import SESSION_FORMAT, SESSION_TOPIC, session_description

    if bag.count(SESSION_TOPIC):
        try:
            info = json.loads(bag.first(SESSION_TOPIC).data)
        except (ValueError, AttributeError):
            raise DatasetError(f"{bag.path}: the session record on {SESSION_TOPIC} is not JSON; the bag is damaged") \
                from None
        if not isinstance(info, dict) or info.get("format") != SESSION_FORMAT:
            raise DatasetError(f"{bag.path}: {SESSION_TOPIC} is not a {SESSION_FORMAT} record")
        return info
    if params_file is None:
        raise DatasetError(f"{bag.path} has no session record on {SESSION_TOPIC} (recorded by an older node); pass "
                           "--params-file with the parameter file the node ran with")
    from hardware.deploy_config import load_deploy_config

    return session_description(load_deploy_config(params_file))


# ---------------------------------------------------------------------------------------------- conversion
def _image(msg: Any, key: str, size: int) -> np.ndarray:
    from hardware.ros_convert import image_to_numpy, resize_nearest

    image = image_to_numpy(msg)
    if key.endswith("_depth") != (image.dtype == np.uint16):
        raise ValueError(f"'{key}' arrived as {msg.encoding}")
    return resize_nearest(image, size, size) if size else image


class _Session:
    """Walks the bag in time order and emits one step per commanded tick (see the module docstring)."""

    def __init__(self, bag: _Bag, info: dict[str, Any], config: SessionImportConfig):
        from hardware.kinematics import chain_by_name

        self.bag, self.info, self.config = bag, info, config
        topics = info["topics"]
        self.output = info["output"]
        self.dt = 1.0 / float(info["control_hz"])
        self.joint_names, self.finger_names = list(info["joint_names"]), list(info["gripper_joint_names"])
        self.chain = chain_by_name(info.get("kinematics", "franka")) if self.output == "joint_trajectory" else None
        self.command_topic, self.gripper_topic = topics["command"], topics["gripper"]
        self.proposed = {f"/robo_policy_node/proposed/{self.output}", "/robo_policy_node/proposed/gripper"}
        self.streams = {topics["joint_states"]: "joint_states", topics["eef_pose"]: "eef_pose",
                        **{t: k for k, t in info["image_topics"].items()},
                        **{t: k for k, t in info["lowdim_topics"].items()}}
        self.provenance_topic = topics.get("provenance", "/robo_policy_node/provenance")
        self.image_keys = set(info["image_topics"])
        self.skipped: Counter[str] = Counter()  # over the whole bag, also ticks outside any written episode

    # ------------------------------------------------------------------ up-front checks (nothing written yet)
    def check(self) -> None:
        bag, topics = self.bag, self.info["topics"]
        if not bag.count(self.provenance_topic):
            raise DatasetError(f"{bag.path} has no provenance messages on {self.provenance_topic}; it was not "
                               "recorded by the policy node with record_bag")
        if not (bag.count(topics["joint_states"]) and bag.count(topics["eef_pose"])):
            raise DatasetError(f"{bag.path} has no state messages ({topics['joint_states']}: "
                               f"{bag.count(topics['joint_states'])}, {topics['eef_pose']}: "
                               f"{bag.count(topics['eef_pose'])}); nothing to build observations from")
        if not bag.count(self.command_topic):
            dry = sum(bag.count(t) for t in self.proposed)
            why = (f"only dry-run proposals ({dry} on ~/proposed), which the arm never executed" if dry
                   else f"no commands on {self.command_topic}")
            raise DatasetError(f"{bag.path} has {why}; nothing to import")

    def schema(self, task: str) -> DatasetSchema:
        """Observation specs from the recorded streams (image sizes and low-dim lengths from their first message)."""
        obs = {"eef_pos": ArraySpec((3,), "float32"), "eef_quat": ArraySpec((4,), "float32"),
               "joint_pos": ArraySpec((len(self.joint_names),), "float32")}
        if self.finger_names:
            obs["gripper_qpos"] = ArraySpec((len(self.finger_names),), "float32")
        for topic, key in self.streams.items():
            if key in ("joint_states", "eef_pose") or not self.bag.count(topic):
                continue  # a configured stream that never arrived is not an observation of this session
            msg = self.bag.first(topic)
            try:
                value = _image(msg, key, self.config.image_size) if key in self.image_keys else \
                    np.asarray(msg.data, np.float32)
            except ValueError as exc:
                raise DatasetError(f"{self.bag.path}: {topic} ('{key}') cannot be read: {_first_line(exc)}") from None
            obs[key] = ArraySpec.of(value)
        if self.config.obs_keys:
            unknown = sorted(set(self.config.obs_keys) - set(obs))
            if unknown:
                raise DatasetError(f"--obs-keys {unknown} are not recorded in {self.bag.path} (it has {sorted(obs)})")
            obs = {k: obs[k] for k in self.config.obs_keys}
        robot = {"robot": self.info.get("robot"), "controller": f"ROS 2 {self.output} commands",
                 "control_freq": float(self.info["control_hz"]), "joint_names": self.joint_names,
                 "gripper_joint_names": self.finger_names, "eef_quat_order": "xyzw",
                 "action": ["dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper"], "gripper": "-1 open, +1 close",
                 "imported_from": {"format": "rosbag2 session", "path": str(self.bag.path)}}
        return DatasetSchema(obs=obs, action=ArraySpec((7,), "float32"), fps=float(self.info["control_hz"]),
                             task=task, robot_config=robot,
                             step_arrays=dict(STEP_ARRAYS) if self.config.step_arrays else {})

    # ------------------------------------------------------------------ the walk
    def episodes(self, schema: DatasetSchema) -> Iterator[tuple[dict[str, np.ndarray], EpisodeInfo]]:
        from hardware.ros_convert import MessageError, pose_to_arrays
        from sim.ros_mock import command_to_action

        joints: dict[str, float] = {}
        latest: dict[str, Any] = {}
        command, gripper = None, None
        episode = _Episode()
        topics = set(self.streams) | {self.command_topic, self.gripper_topic, self.provenance_topic,
                                      EPISODE_MARKER} | self.proposed
        for topic, _, msg in self.bag.messages(topics):
            stream = self.streams.get(topic)
            if stream == "joint_states":
                if len(msg.name) == len(msg.position):  # the node rejects a mismatched message the same way
                    joints.update(zip(msg.name, (float(p) for p in msg.position)))
            elif stream is not None:
                latest[stream] = msg
            elif topic == self.command_topic:
                command = msg
            elif topic in self.proposed:
                command = "dry_run"
            elif topic == self.gripper_topic:
                gripper = msg.data
            elif topic == EPISODE_MARKER:
                yield from episode.close(self, _marker_success(msg))
                episode = _Episode()
            elif topic == self.provenance_topic:
                tick, command = command, None  # this tick's command is the one recorded since the last tick
                why = self._skip_reason(msg, tick, gripper)
                if why is not None:
                    episode.skipped[why] += 1
                    self.skipped[why] += 1
                    if why.startswith(("hold: disarmed", "dry run")):
                        yield from episode.close(self, None)
                        episode = _Episode()
                    continue
                record = json.loads(msg.data)
                try:
                    obs, pos, quat, q_arm = self._observation(schema, joints, latest, pose_to_arrays)
                    arm = command_to_action(self.output, tick, pos, quat, q_arm, self.dt, joint_names=self.joint_names,
                                            chain=self.chain)
                except (MessageError, ValueError, KeyError) as exc:
                    why = f"unreadable state or command ({_first_line(exc)[:60]})"
                    episode.skipped[why] += 1
                    self.skipped[why] += 1
                    continue
                stamp = float(record.get("t", 0.0))
                if episode.stamps and stamp - episode.stamps[-1] > self.config.max_gap_s:
                    yield from episode.close(self, None)
                    episode = _Episode()
                episode.add(obs, np.concatenate([arm, [self._gripper_action(gripper)]]).astype(np.float32),
                            record["source"] == "operator", bool(record.get("interventions")), stamp)
        yield from episode.close(self, None)

    def _skip_reason(self, msg: Any, command: Any, gripper: float | None) -> str | None:
        try:
            record = json.loads(msg.data)
            source = record["source"]
        except (ValueError, KeyError, TypeError):
            return "unreadable provenance"
        if source == "hold":
            # No one decided an action: the state was refused or the arm disarmed. Training on these ticks (or on
            # the watchdog's stand-still command) would teach the policy to freeze, so they are not steps.
            reason = str(record.get("reason", "unknown")).split(" (")[0]
            return "hold: " + re.sub(r"-?\d+(\.\d+)?", "#", reason)[:80]  # counted by kind, as the node does
        if isinstance(command, str):
            return "dry run (not executed)"
        if command is None:
            return "command not recorded"
        if gripper is None:
            return "no gripper command yet"
        return None

    def _observation(self, schema: DatasetSchema, joints: dict[str, float], latest: dict[str, Any],
                     pose_to_arrays: Any) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
        """The observation in the schema's keys, and the measured pose and arm joints the command started from
        (needed even when --obs-keys leaves them out of the dataset)."""
        missing = [n for n in self.joint_names + self.finger_names if n not in joints]
        if missing or "eef_pose" not in latest:
            raise ValueError(f"no state yet for {missing[:2] or ['eef_pose']}")
        pos, quat = pose_to_arrays(latest["eef_pose"])
        q = np.array([joints[n] for n in self.joint_names + self.finger_names], dtype=np.float64)
        obs = {"eef_pos": pos.astype(np.float32), "eef_quat": quat.astype(np.float32),
               "joint_pos": q[:len(self.joint_names)].astype(np.float32),
               "gripper_qpos": q[len(self.joint_names):].astype(np.float32)}
        for key in schema.obs:
            if key in obs:
                continue
            if key not in latest:
                raise ValueError(f"no '{key}' message yet")
            msg = latest[key]
            obs[key] = _image(msg, key, self.config.image_size) if key in self.image_keys else \
                np.asarray(msg.data, np.float32)
            if obs[key].shape != schema.obs[key].shape:
                raise ValueError(f"'{key}' is {obs[key].shape}, the session's first was {schema.obs[key].shape}")
        if not np.all(np.isfinite(q)):
            raise ValueError("joint state contains NaN or inf")
        return {k: obs[k] for k in schema.obs}, pos, quat, q[:len(self.joint_names)]

    def _gripper_action(self, width: float) -> float:
        # The node sends the latched gripper state (+-1 after hysteresis) as a width; map it back to that state.
        open_w, closed_w = float(self.info["gripper_open_width"]), float(self.info["gripper_closed_width"])
        frac = (float(width) - open_w) / (closed_w - open_w) if closed_w != open_w else 0.0
        return 1.0 if frac > 0.5 else -1.0


def _marker_success(msg: Any) -> bool | None:
    try:
        return bool(json.loads(msg.data).get("success"))
    except (ValueError, AttributeError):
        return None


def _ranges(flags: list[bool]) -> list[list[int]]:
    """[[start, end), ...] of the runs of True: an episode record's compact copy of a per-step flag."""
    out, start = [], None
    for i, flag in enumerate([*flags, False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            out.append([start, i])
            start = None
    return out


@dataclass
class _Episode:
    obs: list[dict[str, np.ndarray]] = field(default_factory=list)
    actions: list[np.ndarray] = field(default_factory=list)
    operator: list[bool] = field(default_factory=list)
    filtered: list[bool] = field(default_factory=list)
    stamps: list[float] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)

    def add(self, obs: dict[str, np.ndarray], action: np.ndarray, operator: bool, filtered: bool, stamp: float) -> None:
        self.obs.append(obs)
        self.actions.append(action)
        self.operator.append(operator)
        self.filtered.append(filtered)
        self.stamps.append(stamp)

    def close(self, session: _Session, success: bool | None) -> Iterator[tuple[dict[str, np.ndarray], EpisodeInfo]]:
        """Yield the episode's arrays and record if it has steps (nothing otherwise)."""
        n = len(self.actions)
        if not n:
            return
        steps = {k: np.stack([o[k] for o in self.obs]) for k in self.obs[0]}
        steps[ACTION_KEY] = np.stack(self.actions)
        steps["timestamp"] = np.asarray(self.stamps, np.float64)
        steps["success"] = np.zeros(n, bool)
        steps["terminal"] = np.zeros(n, bool)
        steps["truncated"] = np.zeros(n, bool)
        steps["reward"] = np.zeros(n, np.float32)
        if success:  # the sim mock ends an episode on success (terminal) or at its horizon
            steps["success"][-1] = steps["terminal"][-1] = True
            steps["reward"][-1] = 1.0
        else:  # an operator stop, a disarm or the horizon: the task did not end here, so bootstrap past it
            steps["truncated"][-1] = True
        steps[INTERVENTION_KEY] = np.asarray(self.operator, bool)
        steps[FILTERED_KEY] = np.asarray(self.filtered, bool)
        info = session.info
        yield steps, EpisodeInfo(
            source="deployment", success=bool(success), checkpoint_id=info.get("checkpoint_id"),
            extra={"origin": "rosbag2 session", "bag": str(session.bag.path), "robot": info.get("robot"),
                   "output": session.output, "checkpoint": info.get("checkpoint"), "outcome_known": success is not None,
                   "operator_steps": int(sum(self.operator)), "policy_steps": n - int(sum(self.operator)),
                   "intervention_ranges": _ranges(self.operator), "safety_filtered_ranges": _ranges(self.filtered),
                   "skipped_ticks": dict(self.skipped)})


# ---------------------------------------------------------------------------------------------- import
@contextlib.contextmanager
def _target(output: Path, schema: DatasetSchema, config: SessionImportConfig) -> Iterator[ZarrDataset]:
    """A new dataset (staged: all or nothing) or an existing one whose schema matches (checked read-only first,
    so a refused append writes nothing, not even a torn-tail cleanup)."""
    from robo.data.staging import staged_output

    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        with ZarrDataset.open(output) as existing:
            problem, have = existing.schema.mismatch(schema), existing.zarr_format
        if problem:
            hint = " (--no-step-arrays drops the per-step flags)" if "per-step arrays" in problem else ""
            raise DatasetError(f"cannot append to {output}: {problem}{hint}; import into a new -o")
        if config.zarr_format is not None and config.zarr_format != have:
            raise DatasetError(f"cannot append to {output}: it is a zarr-{have} store and --zarr-format "
                               f"{config.zarr_format} was asked for; drop --zarr-format")
        with ZarrDataset.open(output, mode="a") as ds:
            yield ds
        return
    with staged_output(output) as staging:
        with ZarrDataset.create(staging, schema, zarr_format=config.zarr_format or 3,
                                compression=config.compression) as ds:
            yield ds


def import_session(bag: str | Path, output: str | Path, config: SessionImportConfig | None = None) -> SessionReport:
    """Convert one session bag into episodes of ``output`` (created, or appended to when its schema matches)."""
    config = config or SessionImportConfig()
    bag, output = Path(bag), Path(output)
    if config.max_gap_s <= 0 or config.image_size < 0:
        raise DatasetError("max_gap_s must be positive and image_size >= 0")
    report = SessionReport(output)
    with _open_bag(bag) as reader:
        session = _Session(reader, _session_record(reader, config.params_file), config)
        session.check()
        schema = session.schema(config.task)
        with _target(output, schema, config) as ds:
            for steps, info in session.episodes(schema):
                if not config.step_arrays:
                    steps = {k: v for k, v in steps.items() if k not in STEP_ARRAYS}
                ds.append_episode(steps, info)
                report.episodes += 1
                report.steps += info.length
                report.operator_steps += int(info.extra["operator_steps"])
            report.skipped = session.skipped + Counter({f"undecodable {t}": n for t, n in reader.undecodable.items()})
            if not report.episodes:
                raise DatasetError(f"{bag}: no control tick sent a command the arm executed; nothing imported")
    log.debug(report.summary())
    return report
