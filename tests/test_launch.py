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


# ROS packages a launch file may start that come from a ROS install, not from this repository (the robot files
# name realsense2_camera only in a comment; our pyrealsense2 node is the default).
EXTERNAL_ROS_PACKAGES = {"realsense2_camera": "realsense-ros (apt install ros-jazzy-realsense2-camera)"}


def _path_like(value):
    return "/" in value and value.endswith((".yaml", ".yml"))


def test_every_launch_file_names_things_that_exist():
    """Each executable's Python module imports, each parameter file loads with the reader that node uses, each
    ROS package is either ours or a documented external one, and robo deploy sees the same processes."""
    import importlib.util

    from hardware.deploy_config import load_deploy_config
    from robo.deploy import launch_processes

    files = sorted(LAUNCH.glob("*.launch.yaml"))
    assert {f.name for f in files} >= {"sim.launch.yaml", "fr3.launch.yaml", "panda.launch.yaml", "ur5e.launch.yaml"}
    for path in files:
        entries = yaml.safe_load(path.read_text())["launch"]
        defaults = {e["arg"]["name"]: str(e["arg"]["default"]) for e in entries if "arg" in e}
        for name, value in defaults.items():
            if _path_like(value):
                assert (LAUNCH.parent / value).is_file(), f"{path.name}: arg {name} -> {value} does not exist"
        for proc in launch_processes(path, {}):
            argv = list(proc.argv)
            if proc.ros_package:
                assert argv[2] in EXTERNAL_ROS_PACKAGES, f"{path.name} starts unknown ROS package {argv[2]}"
                continue
            if argv[1:2] == ["-m"]:
                assert importlib.util.find_spec(argv[2]) is not None, f"{path.name}: no module {argv[2]}"
            if "--params-file" in argv:
                params = LAUNCH.parent / argv[argv.index("--params-file") + 1]
                assert params.is_file(), f"{path.name}: {params} does not exist"
                if argv[2] == "hardware.ros_node":
                    load_deploy_config(params)
                else:
                    _check_mock_params(params)


def _check_mock_params(path):
    import dataclasses

    from hardware.deploy_config import read_params_file
    from sim.ros_mock import MockConfig

    names = {f.name for f in dataclasses.fields(MockConfig)}
    assert set(read_params_file(path, "robo_sim_mock")) <= names, f"{path}: unknown sim mock parameters"


def test_deploy_refuses_unknown_launch_arguments(tmp_path):
    import pytest

    from robo.deploy import LaunchFileError, launch_processes

    with pytest.raises(LaunchFileError, match=r"has no arguments \['chekpoint'\]"):
        launch_processes(LAUNCH / "sim.launch.yaml", {"chekpoint": "x"})
    procs = launch_processes(LAUNCH / "fr3.launch.yaml", {"checkpoint": "/tmp/ckpt", "dry_run": "true"})
    node = [p for p in procs if p.name == "hardware.ros_node"][0].argv
    assert [p.name for p in procs] == ["hardware.realsense_node", "hardware.ros_node"]
    assert "checkpoint:=/tmp/ckpt" in node and "dry_run:=true" in node
