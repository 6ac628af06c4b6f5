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


def test_robot_yaml_typos_are_refused_with_one_line(tmp_path):
    import pytest

    from hardware.robot_config import RobotConfigError, load_robot_config

    bad = tmp_path / "robot.yaml"
    bad.write_text("arm: {joint_state_topic: /js}\n")
    with pytest.raises(RobotConfigError, match=r"arm: unknown keys \['joint_state_topic'\]"):
        load_robot_config(bad)
    bad.write_text("cameras: [{name: a, exposure: 3}]\n")
    with pytest.raises(RobotConfigError, match=r"cameras\[0\]: unknown keys \['exposure'\]"):
        load_robot_config(bad)
    bad.write_text("arm: [1, 2\n")
    with pytest.raises(RobotConfigError, match="not valid YAML"):
        load_robot_config(bad)
