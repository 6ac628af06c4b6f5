"""Launch files start `robo` commands that the CLI accepts, with their default arguments substituted."""

import re
import shlex
from pathlib import Path

import yaml

from robo.cli import build_parser

LAUNCH = Path(__file__).resolve().parents[1] / "launch"


def _commands(path):
    entries = yaml.safe_load(path.read_text())["launch"]
    defaults = {e["arg"]["name"]: str(e["arg"]["default"]) for e in entries if "arg" in e}
    for entry in entries:
        if "executable" in entry:
            cmd = re.sub(r"\$\(var (\w+)\)", lambda m: defaults[m.group(1)], entry["executable"]["cmd"])
            yield shlex.split(cmd)


def test_collect_launch_command_parses_and_points_at_real_files():
    commands = list(_commands(LAUNCH / "collect_real.launch.yaml"))
    assert commands and commands[0][0] == "robo"
    args = build_parser().parse_args(commands[0][1:])
    assert args.command == "collect" and args.robot == "real" and args.source == "spacemouse"
    assert (LAUNCH.parent / args.robot_config).exists()
    from hardware.robot_config import load_robot_config

    robot = load_robot_config(LAUNCH.parent / args.robot_config)
    assert robot.cameras[0].name == "agentview" and robot.env.control_hz == 20.0
