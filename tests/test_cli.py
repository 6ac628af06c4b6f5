"""The `robo` command line: bad input gets one line on stderr and a non-zero exit, never a traceback."""

import subprocess
import sys

import numpy as np
import zarr

from conftest import episode_steps, info, small_schema
from robo.data.store import ZarrDataset


def robo(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "robo.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


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

