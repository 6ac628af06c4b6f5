"""Record a deployment session to rosbag2 (via `rosbags`, pure Python) without slowing the control loop.

The node hands over message objects (a queue put, no serialisation); a writer thread serialises them with rclpy's
CDR serialiser and writes them to a rosbag2 directory that `ros2 bag play`, `rosbags` and the Zarr importers read.
If the writer falls behind, the oldest pending messages are dropped and counted rather than blocking the node.
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path
from typing import Any


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
                    writer.write(self._connections[topic], stamp_ns, serialize_message(msg))
                    self.written += 1
                except Exception as err:  # noqa: BLE001 - a bad message must not end the recording
                    self.dropped += 1
                    self.error = self.error or f"{topic}: {type(err).__name__}: {err}".splitlines()[0]
        finally:
            writer.close()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)
