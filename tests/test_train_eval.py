"""Training and evaluation end to end on tiny budgets, across policy classes and observation types."""

import json

import numpy as np
import pytest

from robo.data.schema import DatasetSchema, EpisodeInfo
from robo.data.store import ZarrDataset
from robo.evaluate import EvalConfig, evaluate_checkpoint, wilson_interval
from robo.train import build_config, train


@pytest.fixture(scope="module")
def lift_demos(tmp_path_factory):
    """Four scripted Lift demonstrations with a 32x32 agentview camera, recorded through the real collector."""
    from robo.collect import CollectConfig, collect

    path = tmp_path_factory.mktemp("demos") / "lift.zarr"
    collect(CollectConfig(output=path, task="Lift", episodes=4, cameras=("agentview",), image_size=32,
                          progress=False))
    return path


TINY = {"denoiser": {"kind": "unet", "widths": [16, 32], "groups": 4}, "encoder": {"lowdim_hidden": 32,
        "lowdim_features": 16, "rgb_base_channels": 8, "rgb_stages": 2, "rgb_blocks_per_stage": 1, "rgb_groups": 4,
        "num_keypoints": 8, "rgb_features": 16, "rgb_stem_stride": 1}}


@pytest.mark.parametrize("policy", ["diffusion", "consistency", "gaussian"])
@pytest.mark.parametrize("obs_keys", [("eef_pos", "eef_quat", "gripper_qpos", "object_state"),
                                      ("agentview_rgb", "eef_pos", "gripper_qpos")], ids=["lowdim", "rgb"])
def test_train_writes_loadable_checkpoints_and_learns(tmp_path, lift_demos, policy, obs_keys):
    from policies.checkpoint import load_checkpoint, read_config

    policy_config = {} if policy == "gaussian" else {k: v for k, v in TINY.items()}
    if policy == "gaussian":
        policy_config = {"encoder": TINY["encoder"]}
    config = build_config(None, {"dataset": lift_demos, "output_dir": tmp_path / "run", "policy": policy,
                                 "obs_keys": obs_keys, "steps": 40, "batch_size": 32, "val_every": 20,
                                 "val_ratio": 0.25, "eval_episodes": 0, "progress": False, "lr": 3e-3})
    config.policy_config = policy_config
    summary = train(config)
    assert summary["obs_keys"] == list(obs_keys)
    best = load_checkpoint(tmp_path / "run" / "best")
    assert read_config(tmp_path / "run" / "best")["extra"]["task"] == "Lift"
    obs = {k: np.zeros((1, 2, *best.spec.obs_keys[k][0]), dtype=best.spec.obs_keys[k][1]) for k in obs_keys}
    assert best.predict(obs).shape == (1, 16, 7)
    assert (tmp_path / "run" / "training.png").stat().st_size > 10_000
    assert any((tmp_path / "run" / "tb").iterdir())


def test_resume_continues_from_the_last_step(tmp_path, lift_demos):
    base = {"dataset": lift_demos, "output_dir": tmp_path / "run", "steps": 20, "batch_size": 16, "val_ratio": 0.25,
            "val_every": 10, "eval_episodes": 0, "progress": False}
    first = build_config(None, base)
    first.policy_config = TINY
    train(first)
    second = build_config(None, {**base, "steps": 30, "resume": True})
    second.policy_config = TINY
    train(second)
    from policies.checkpoint import read_config

    assert read_config(tmp_path / "run" / "last")["extra"]["step"] == 30


def test_distillation_from_a_teacher_checkpoint(tmp_path, lift_demos):
    keys = ("eef_pos", "eef_quat", "gripper_qpos", "object_state")
    teacher = build_config(None, {"dataset": lift_demos, "output_dir": tmp_path / "teacher", "steps": 20,
                                  "batch_size": 16, "val_ratio": 0.25, "eval_episodes": 0, "progress": False,
                                  "obs_keys": keys})
    teacher.policy_config = TINY
    train(teacher)
    student = build_config("distill", {"dataset": lift_demos, "output_dir": tmp_path / "student",
                                       "teacher": tmp_path / "teacher" / "best", "steps": 10, "batch_size": 16,
                                       "eval_episodes": 0, "progress": False})
    train(student)
    from policies.checkpoint import load_checkpoint

    one_step = load_checkpoint(tmp_path / "student" / "best")
    assert one_step.kind == "consistency" and one_step.spec.obs_keys.keys() == set(keys)


def test_eval_runs_seeded_episodes_and_writes_results(tmp_path, lift_demos):
    config = build_config(None, {"dataset": lift_demos, "output_dir": tmp_path / "run", "steps": 5,
                                 "batch_size": 16, "val_ratio": 0.25, "eval_episodes": 0, "progress": False})
    config.policy_config = TINY
    train(config)
    out = tmp_path / "eval"
    result = evaluate_checkpoint(EvalConfig(checkpoint=tmp_path / "run" / "best", episodes=3, num_envs=2,
                                            video_episodes=1, output_dir=out, progress=False))
    assert result["task"] == "Lift" and result["episodes"] == 3 and result["seeds"] == [10000, 10001, 10002]
    assert all(0 < n <= 200 for n in result["lengths"])
    saved = json.loads((out / "results.json").read_text())
    assert saved["success_rate"] == result["success_rate"]
    assert (out / "summary.png").stat().st_size > 10_000 and len(result["videos"]) == 1
    import imageio.v3 as iio

    assert iio.imread(result["videos"][0]).shape[0] == result["lengths"][0]


def test_wilson_interval():
    assert wilson_interval(50, 50)[0] > 0.92 and wilson_interval(50, 50)[1] == 1.0
    lo, hi = wilson_interval(45, 50)
    assert 0.78 < lo < 0.80 and 0.95 < hi < 0.97
