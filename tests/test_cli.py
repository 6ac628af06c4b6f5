"""The `robo` command line: bad input gets one line on stderr and a non-zero exit, never a traceback."""

import subprocess
import sys

import numpy as np
import zarr

from conftest import episode_steps, info, small_schema
from robo.data.store import ZarrDataset


def robo(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "robo.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=120, env=env)


def one_line_error(result, *fragments):
    """stderr is exactly one ``error: ...`` line (no traceback, no library chatter) holding every fragment."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def test_not_a_dataset_is_one_line_exit_2(tmp_path):
    (tmp_path / "empty").mkdir()
    result = robo("data", "info", tmp_path / "empty")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith("error: ")
    assert "Traceback" not in result.stderr and "not a zarr store" in result.stderr


def test_check_info_repair_on_a_damaged_store(tmp_path):
    path = tmp_path / "ds.zarr"
    with ZarrDataset.create(path, small_schema()) as ds:
        for e in range(3):
            ds.append_episode(episode_steps(e, 20), info(e, success=e != 1))
    assert robo("data", "check", path).returncode == 0
    shown = robo("data", "info", path, "--json")
    assert shown.returncode == 0 and '"episodes": 3' in shown.stdout and '"success_rate": 0.6666' in shown.stdout
    zarr.open_group(str(path), mode="r+")["data/eef_pos"].resize((45, 3))  # truncate: episode 3 loses steps
    damaged = robo("data", "check", path)
    assert damaged.returncode == 1 and "DAMAGED" in damaged.stdout and "truncated" in damaged.stdout
    opened = robo("data", "info", path)
    assert opened.returncode == 2 and "robo data repair" in opened.stderr
    repaired = robo("data", "repair", path)
    assert repaired.returncode == 0 and "dropped" in repaired.stdout
    assert ZarrDataset.open(path).n_episodes == 2
    np.testing.assert_array_equal(ZarrDataset.open(path).episode(1)["eef_pos"], episode_steps(1, 20)["eef_pos"])


def test_train_refuses_unknown_preset_and_missing_dataset(tmp_path):
    result = robo("train", "--preset", "no_such_preset")
    assert result.returncode == 2 and "no preset 'no_such_preset'" in result.stderr
    result = robo("train", "--dataset", tmp_path / "nope.zarr", "--output-dir", tmp_path / "run")
    assert result.returncode == 2 and "does not exist" in result.stderr and "Traceback" not in result.stderr


def test_eval_refuses_a_directory_that_is_not_a_checkpoint(tmp_path):
    (tmp_path / "ckpt").mkdir()
    result = robo("eval", "--checkpoint", tmp_path / "ckpt", "--episodes", 1)
    assert result.returncode == 2 and "is not a checkpoint" in result.stderr



def test_info_into_a_closed_pipe_ends_quietly(tmp_path):
    """`robo data info --json | head`: the reader is gone before we write; no BrokenPipeError traceback."""
    import os

    path = tmp_path / "ds.zarr"
    with ZarrDataset.create(path, small_schema()) as ds:
        ds.append_episode(episode_steps(0, 10), info(0))
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run([sys.executable, "-m", "robo.cli", "data", "info", "--json", str(path)],
                                stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert result.returncode == 141 and result.stderr == ""


def test_check_fails_a_zarr2_store_its_readers_refuse_and_repair_names_the_same_tail(tmp_path):
    path = tmp_path / "ds.zarr"
    with ZarrDataset.create(path, small_schema(), zarr_format=2) as ds:
        for e in range(2):
            ds.append_episode(episode_steps(e, 20), info(e))
    # What a crash inside a commit leaves: arrays sized past episode_ends[-1] and the episode record written.
    root = zarr.open_group(str(path), mode="r+")
    for _, arr in root["data"].arrays():
        arr.resize((45, *arr.shape[1:]))
    root["meta"].attrs["episodes"] = list(root["meta"].attrs["episodes"]) + [info(2).to_json()]
    checked = robo("data", "check", path)
    assert checked.returncode == 1 and "NEEDS REPAIR" in checked.stdout and "ReplayBuffer" in checked.stdout
    assert "torn tail of 5 steps, 1 episode record" in checked.stdout
    repaired = robo("data", "repair", path)
    assert repaired.returncode == 0 and "dropped a torn tail of 5 steps, 1 episode record and 0 damaged" in repaired.stdout
    assert robo("data", "check", path).returncode == 0


def test_collect_refuses_another_zarr_format_onto_an_existing_store_in_one_line(tmp_path):
    from robo.collect import CollectConfig, collect

    path = tmp_path / "demos.zarr"
    collect(CollectConfig(output=path, episodes=1, zarr_format=2, progress=False))
    # The sim starts before the refusal, so this also shows that no OpenGL INFO line precedes it.
    one_line_error(robo("collect", "--episodes", 1, "--zarr-format", 3, "--output", path, "--no-progress"),
                   "zarr-2 store and --zarr-format 3", "drop --zarr-format")
    collect(CollectConfig(output=path, episodes=1, seed=1, progress=False))  # no format asked: the store's own
    with ZarrDataset.open(path) as ds:
        assert ds.n_episodes == 2 and ds.zarr_format == 2


def test_real_arm_not_connected_is_one_line(tmp_path):
    # conftest keeps ROS discovery on loopback and picks a domain of its own: nothing answers here.
    one_line_error(robo("collect", "--robot", "real", "--source", "spacemouse", "--ready-timeout-s", 1,
                        "--output", tmp_path / "real.zarr"),
                   "the arm is not ready after 1 s", "start the arm's ROS 2 driver", "ROS_DOMAIN_ID")


def test_keyboard_teleop_without_a_display_is_one_line(tmp_path):
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "PYNPUT_BACKEND", "WAYLAND_DISPLAY")}
    one_line_error(robo("collect", "--source", "keyboard", "--output", tmp_path / "kb.zarr", env=env),
                   "keyboard teleop needs a graphical session and DISPLAY is not set", "--source spacemouse")


def test_list_flags_accumulate_when_repeated_and_replace_the_default():
    """`robo deploy --arg a:=1 --arg b:=2` keeps both (plain argparse kept only the last: a DDS test's mock ran
    on the launch file's default parameters because its --arg mock_params:=... was followed by --arg params:=...)."""
    import argparse
    from dataclasses import dataclass

    from robo.cli import build_parser
    from robo.config_cli import add_dataclass_args, dataclass_from_args
    from robo.deploy import DeployRunConfig

    args = build_parser().parse_args(["deploy", "--arg", "mock_params:=m.yaml", "--arg", "params:=n.yaml"])
    assert dataclass_from_args(DeployRunConfig, args).arg == ("mock_params:=m.yaml", "params:=n.yaml")
    args = build_parser().parse_args(["deploy", "--arg", "mock_params:=m.yaml", "params:=n.yaml"])
    assert dataclass_from_args(DeployRunConfig, args).arg == ("mock_params:=m.yaml", "params:=n.yaml")

    @dataclass
    class WithDefault:
        cameras: tuple[str, ...] = ("agentview",)

    for explicit in (False, True):
        parser = argparse.ArgumentParser()
        add_dataclass_args(parser, WithDefault, only_explicit=explicit)
        assert parser.parse_args(["--cameras", "a", "--cameras", "b"]).cameras == ["a", "b"]
        assert parser.parse_args(["--cameras"]).cameras == []
        if not explicit:
            assert parser.parse_args([]).cameras == ("agentview",)
    assert argparse.Namespace(**vars(parser.parse_args([]))) == argparse.Namespace()  # only_explicit: nothing given
