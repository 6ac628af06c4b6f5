"""``robo deploy``: run a launch file's processes without ros2cli (``launch``/``launch_ros`` have no wheels).

It reads the same ``launch/*.launch.yaml`` that ``ros2 launch`` reads, substitutes ``$(var name)`` from the
file's args (defaults, then ``--arg name:=value``, ``--checkpoint``), and starts every ``executable`` entry with
this Python (``python3`` is replaced by ``sys.executable``), so the processes and their parameter files are the
ones ``ros2 launch`` would start. ``node`` entries name ROS packages (e.g. realsense2_camera); they are started
with ``ros2 run`` when ros2 is on PATH, otherwise listed so the operator starts them. Ctrl-C (or ``--seconds``)
stops every child with SIGINT, the way ros2 launch does; if one child exits, the others are stopped too.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]


class LaunchFileError(ValueError):
    """A launch file that cannot be run; the message says what is wrong."""


@dataclass
class DeployRunConfig:
    launch: Path = Path("launch/sim.launch.yaml")  # launch file to run (the same file ros2 launch takes)
    checkpoint: str = ""  # shorthand for --arg checkpoint:=<dir>; empty keeps the launch file's default
    arg: tuple[str, ...] = ()  # launch arguments, name:=value (repeatable)
    seconds: float = 0.0  # stop everything after this long; 0 = run until Ctrl-C or a process exits


@dataclass(frozen=True)
class Process:
    name: str  # what the operator sees in messages
    argv: tuple[str, ...]  # the command line
    ros_package: bool = False  # a `node` entry (needs ros2 run and the package)


def launch_processes(path: Path, args: dict[str, str]) -> list[Process]:
    """The processes a launch file starts, with ``$(var ...)`` substituted."""
    path = Path(path)
    if not path.is_file():
        raise LaunchFileError(f"launch file {path} does not exist; see {REPO / 'launch'}")
    try:
        entries = (yaml.safe_load(path.read_text()) or {}).get("launch")
    except yaml.YAMLError as exc:
        raise LaunchFileError(f"{path} is not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(entries, list):
        raise LaunchFileError(f"{path} needs a top-level 'launch:' list")
    values = {e["arg"]["name"]: str(e["arg"].get("default", "")) for e in entries if "arg" in e}
    unknown = sorted(set(args) - set(values))
    if unknown:
        raise LaunchFileError(f"{path} has no arguments {unknown}; it takes {sorted(values)}")
    values.update(args)

    def substitute(text: str) -> str:
        def one(match: re.Match) -> str:
            if match.group(1) not in values:
                raise LaunchFileError(f"{path} uses $(var {match.group(1)}) but declares no such arg")
            return values[match.group(1)]

        return re.sub(r"\$\(var (\w+)\)", one, str(text))

    processes = []
    for entry in entries:
        if "executable" in entry:
            argv = shlex.split(substitute(entry["executable"]["cmd"]))
            if argv and argv[0] in ("python3", "python"):
                argv[0] = sys.executable
            name = argv[2] if argv[1:2] == ["-m"] and len(argv) > 2 else " ".join(argv[:2])
            processes.append(Process(name, tuple(argv)))
        elif "node" in entry:
            node = entry["node"]
            argv = ["ros2", "run", node["pkg"], node["exec"], "--ros-args"]
            if node.get("namespace"):
                argv += ["-r", f"__ns:=/{node['namespace']}"]
            if node.get("name"):
                argv += ["-r", f"__node:={node['name']}"]
            for param in node.get("param", []):
                value = param["value"]
                value = ("true" if value else "false") if isinstance(value, bool) else substitute(value)
                argv += ["-p", f"{param['name']}:={value}"]
            processes.append(Process(f"{node['pkg']}/{node['exec']}", tuple(argv), ros_package=True))
    return processes


def _parse_args(pairs: tuple[str, ...], checkpoint: str) -> dict[str, str]:
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition(":=")
        if not sep:
            raise LaunchFileError(f"launch argument '{pair}' must look like name:=value")
        out[name] = value
    if checkpoint:
        out["checkpoint"] = checkpoint
    return out


def run_deploy(config: DeployRunConfig) -> int:
    """Start the launch file's processes; returns the first non-zero exit status (0 when stopped cleanly)."""
    processes = launch_processes(REPO / config.launch if not Path(config.launch).is_absolute() else config.launch,
                                 _parse_args(tuple(config.arg), config.checkpoint))
    have_ros2 = shutil.which("ros2") is not None
    # A shell without job control starts `robo deploy &` with SIGINT ignored, and Python then never raises
    # KeyboardInterrupt: the children (rclpy installs its own handler) would stop on Ctrl-C while the launcher lived
    # on. The launcher's contract is that SIGINT stops it and everything it started; set before the children start,
    # so they do not inherit the ignore either. An in-process caller gets its own handler back (finally, below).
    in_main_thread = threading.current_thread() is threading.main_thread()  # only it may set handlers
    previous_sigint = signal.signal(signal.SIGINT, signal.default_int_handler) if in_main_thread else None
    children: list[tuple[Process, subprocess.Popen]] = []
    status = 0
    try:  # a Ctrl-C while the children are still starting stops those already started
        for proc in processes:
            if proc.ros_package and not have_ros2:
                print(f"not started (needs a ROS 2 install): {' '.join(proc.argv)}", flush=True)
                continue
            print(f"starting {proc.name}", flush=True)
            children.append((proc, subprocess.Popen(list(proc.argv), cwd=REPO, env=dict(os.environ))))
        deadline = time.monotonic() + config.seconds if config.seconds > 0 else None
        while True:
            exited = [(p, c.returncode) for p, c in children if c.poll() is not None]
            if exited:
                proc, code = exited[0]
                print(f"{proc.name} exited with status {code}; stopping the others", flush=True)
                status = code or 0
                break
            if deadline is not None and time.monotonic() > deadline:
                break
            time.sleep(0.1)
    except KeyboardInterrupt:
        pass
    finally:
        _stop(children)
        if in_main_thread:
            signal.signal(signal.SIGINT, previous_sigint)
    return status


def _stop(children: list[tuple[Process, Any]]) -> None:
    for _, child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGINT)
    for _, child in children:
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
