"""Record a deployment session to rosbag2 (via `rosbags`, pure Python) without slowing the control loop.

The node hands over the CDR bytes its raw subscriptions took, or the message objects it publishes (a queue put, no
serialisation); a writer thread serialises the objects with rclpy's CDR serialiser and writes everything to a
rosbag2 directory that `ros2 bag play`, `rosbags` and the Zarr importers read. Of the state streams the bag holds
what the control tick used (the newest message of each at each tick), not every message the drivers sent: record
the driver topics with `ros2 bag record` for a full log.
If the writer falls behind, the oldest pending messages are dropped and counted rather than blocking the node.
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path
from typing import Any

# What the node writes besides the messages it receives and publishes: its configuration once at the start (so a
# bag says which topic is which observation key, what the commands mean and which checkpoint ran) and every
# control tick's provenance. `robo data import-session` reads both.
SESSION_TOPIC = "/robo_policy_node/session"
PROVENANCE_TOPIC = "/robo_policy_node/provenance"
SESSION_FORMAT = "robo-session"
SESSION_VERSION = 1


def checkpoint_id(path: str | Path, manifest: dict[str, Any] | None = None) -> str | None:
    """``<dir>#<first 12 hex of its hash>``: a deploy artifact's content hash, a checkpoint's weights hash."""
    if manifest and manifest.get("content_sha256"):
        return f"{Path(path).resolve()}#{str(manifest['content_sha256'])[:12]}"
    try:
        from policies.checkpoint import read_config

        sha = read_config(Path(path)).get("weights_sha256")
    except Exception:  # noqa: BLE001 - an id is a label: a checkpoint without one still runs
        return None
    return f"{Path(path).resolve()}#{str(sha)[:12]}" if sha else None


def session_description(config: Any, ckpt_id: str | None = None) -> dict[str, Any]:
    """The session record for a ``hardware.deploy_config.DeployConfig``: everything an importer needs to turn the
    bag's topics back into observation keys and the commands back into training actions."""
    from hardware.deploy_config import split_mapping

    command = {"pose": config.target_pose_topic, "joint_trajectory": config.joint_trajectory_topic,
               "twist": config.twist_topic}[config.output]
    return {"format": SESSION_FORMAT, "version": SESSION_VERSION, "robot": config.robot,
            "control_hz": float(config.control_hz), "output": config.output, "kinematics": config.kinematics,
            "joint_names": list(config.joint_names), "gripper_joint_names": list(config.gripper_joint_names),
            "gripper_open_width": float(config.gripper_open_width),
            "gripper_closed_width": float(config.gripper_closed_width),
            "topics": {"joint_states": config.joint_states_topic, "eef_pose": config.eef_pose_topic,
                       "command": command, "gripper": config.gripper_topic,
                       "operator_twist": config.operator_twist_topic,
                       "operator_gripper": config.operator_gripper_topic, "provenance": PROVENANCE_TOPIC},
            "image_topics": dict(split_mapping(e) for e in config.image_topics),
            "lowdim_topics": dict(split_mapping(e) for e in config.lowdim_topics),
            "checkpoint": str(config.checkpoint), "checkpoint_id": ckpt_id}


class SessionRecorder:
    """``record(topic, msgtype, msg, stamp_ns)`` from any thread; ``close()`` flushes and finalises the bag."""

    def __init__(self, path: str | Path, max_pending: int = 10_000):
        from rosbags.rosbag2 import Writer
        from rosbags.typesys import Stores, get_typestore

        self.path = Path(path)
        if self.path.exists():
            raise FileExistsError(f"recording {self.path} already exists; pick a new path (bags are never appended)")
        self._typestore = get_typestore(Stores.LATEST)
        # SQLite objects belong to the thread that made them: the writer is created, used and closed in _run.
        self._writer_cls = Writer
        self._connections: dict[str, Any] = {}
        self.error = ""  # the first write failure, one line (the node reports it on diagnostics)
        self._queue: queue.Queue[tuple[str, str, Any, int] | None] = queue.Queue(maxsize=max_pending)
        self.written = 0
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="session_recorder", daemon=True)
        self._thread.start()

    def record(self, topic: str, msgtype: str, msg: Any, stamp_ns: int) -> None:
        """``msg``: an rclpy message, or its CDR bytes as a raw subscription took them (written as they are)."""
        try:
            self._queue.put_nowait((topic, msgtype, msg, stamp_ns))
        except queue.Full:
            self.dropped += 1

    def _run(self) -> None:
        from rclpy.serialization import serialize_message

        writer = self._writer_cls(self.path, version=9)
        writer.open()
        try:
            while True:
                item = self._queue.get()
                if item is None:
                    return
                topic, msgtype, msg, stamp_ns = item
                try:
                    if topic not in self._connections:
                        self._connections[topic] = writer.add_connection(topic, msgtype, typestore=self._typestore)
                    data = msg if isinstance(msg, bytes) else serialize_message(msg)
                    writer.write(self._connections[topic], stamp_ns, data)
                    self.written += 1
                except Exception as err:  # noqa: BLE001 - a bad message must not end the recording
                    self.dropped += 1
                    self.error = self.error or f"{topic}: {type(err).__name__}: {err}".splitlines()[0]
        finally:
            writer.close()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)
