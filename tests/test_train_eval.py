"""Training and evaluation end to end on tiny budgets, across policy classes and observation types."""

import json

import numpy as np
import pytest
import torch

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
                                 "obs_keys": obs_keys, "steps": 40, "batch_size": 32, "val_every": 10,
                                 "val_ratio": 0.25, "eval_episodes": 0, "progress": False, "lr": 3e-3})
    config.policy_config = policy_config
    summary = train(config)
    assert summary["obs_keys"] == list(obs_keys)
    best = load_checkpoint(tmp_path / "run" / "best")
    assert read_config(tmp_path / "run" / "best")["extra"]["task"] == "Lift"
    obs = {k: np.zeros((1, 2, *best.spec.obs_keys[k][0]), dtype=best.spec.obs_keys[k][1]) for k in obs_keys}
    assert best.predict(obs).shape == (1, 16, 7)
    assert (tmp_path / "run" / "training.png").stat().st_size > 10_000
    # It learns: validation loss (fixed batches and fixed noise, EMA weights) falls. The consistency-training loss
    # is measured against a moving target network, so it need not fall monotonically at this budget.
    history = torch.load(tmp_path / "run" / "last" / "trainer_state.pt", weights_only=True)["history"]
    assert history["val_step"] == [10, 20, 30, 40]
    if policy != "consistency":
        assert history["val_loss"][-1] < history["val_loss"][0], history["val_loss"]
    assert any((tmp_path / "run" / "tb").iterdir())


LOWDIM = ("eef_pos", "eef_quat", "gripper_qpos", "object_state")


def _weights(directory) -> dict:
    from safetensors.torch import load_file

    return load_file(str(directory / "model.safetensors"))


def _assert_same_weights(a, b):
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def _tiny(policy: str) -> dict:
    return {"encoder": TINY["encoder"]} if policy == "gaussian" else TINY


@pytest.mark.parametrize("policy,obs_keys", [("diffusion", LOWDIM), ("consistency", LOWDIM), ("gaussian", LOWDIM),
                                             ("diffusion", ("agentview_rgb", "eef_pos"))],
                         ids=["diffusion", "consistency", "gaussian", "diffusion-rgb"])
def test_resume_is_exact(tmp_path, lift_demos, policy, obs_keys):
    """2N steps straight == N steps, interrupted (--stop-after), then resumed for N more: raw weights, EMA and
    optimiser moments bit-identical (CPU, one thread)."""
    base = {"dataset": lift_demos, "policy": policy, "obs_keys": obs_keys, "steps": 8, "batch_size": 8,
            "val_ratio": 0.25, "val_every": 3, "eval_episodes": 0, "progress": False, "threads": 1,
            "checkpoint_every": 2}

    def run(out, **over):
        config = build_config(None, {**base, "output_dir": out, **over})
        config.policy_config = _tiny(policy)
        return train(config)

    run(tmp_path / "straight")
    stopped = run(tmp_path / "resumed", stop_after=4)
    assert not stopped["finished"] and stopped["step"] == 4
    with pytest.raises(Exception, match="--resume"):  # a second start without --resume never overwrites it
        run(tmp_path / "resumed")
    run(tmp_path / "resumed", resume=True)
    _assert_same_weights(tmp_path / "straight" / "last", tmp_path / "resumed" / "last")
    a = torch.load(tmp_path / "straight" / "last" / "trainer_state.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "last" / "trainer_state.pt", weights_only=True)
    for key in a["optimizer"]["state"]:
        for name in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(a["optimizer"]["state"][key][name], b["optimizer"]["state"][key][name])
    assert a["schedule"] == b["schedule"] and a["history"] == b["history"]


def test_grad_accumulation_equals_the_plain_global_batch(tmp_path, lift_demos):
    """Splitting the global batch changes nothing but memory: the same seeds give the same samples and noise."""
    base = {"dataset": lift_demos, "obs_keys": LOWDIM, "steps": 4, "batch_size": 8, "val_ratio": 0.25,
            "eval_episodes": 0, "progress": False, "threads": 1, "policy": "gaussian"}
    for name, accum in (("one", 1), ("four", 4)):
        config = build_config(None, {**base, "output_dir": tmp_path / name, "grad_accum": accum})
        config.policy_config = {"encoder": TINY["encoder"], "loss": "mse"}
        train(config)
    one, four = _weights(tmp_path / "one" / "last"), _weights(tmp_path / "four" / "last")
    for k in one:  # summation order differs: equal to float precision, not bit for bit
        torch.testing.assert_close(one[k], four[k], rtol=1e-5, atol=1e-6)


def test_ddp_two_ranks_are_identical_replicas_and_match_one_process(tmp_path, lift_demos):
    """torchrun, 2 ranks, gloo on the CPU: replicas stay identical and equal one process running the same global
    batch as two micro-batches (what each rank does), bit for bit."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    args = ["--dataset", str(lift_demos), "--policy", "diffusion", "--obs-keys", *LOWDIM, "--steps", "4",
            "--batch-size", "8", "--val-ratio", "0.25", "--val-every", "2", "--eval-episodes", "0",
            "--no-progress", "--threads", "1"]
    preset = tmp_path / "tiny.yaml"
    import yaml

    preset.write_text(yaml.safe_dump({"policy": TINY}))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = Path(sys.executable).parent / "torchrun"
    ddp = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "robo.cli", "train",
                          "--preset", str(preset), "--output-dir", str(tmp_path / "ddp"), *args],
                         env=env, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    single = subprocess.run([sys.executable, "-m", "robo.cli", "train", "--preset", str(preset), "--output-dir",
                             str(tmp_path / "single"), "--grad-accum", "2", *args],
                            env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["replicas_identical"] is True
    _assert_same_weights(tmp_path / "ddp" / "last", tmp_path / "single" / "last")


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


@pytest.mark.parametrize("policy", ["diffusion", "consistency", "gaussian"])
def test_the_same_eval_command_gives_the_same_episodes(tmp_path, lift_demos, policy):
    """Environments and the policy's sampling noise are both seeded: outcomes, lengths and every executed action
    repeat exactly; another seed gives other actions (so the check can fail)."""
    config = build_config(None, {"dataset": lift_demos, "output_dir": tmp_path / "run", "steps": 3, "policy": policy,
                                 "obs_keys": LOWDIM, "batch_size": 8, "val_ratio": 0.25, "eval_episodes": 0,
                                 "progress": False})
    config.policy_config = _tiny(policy)
    if policy == "gaussian":
        config.policy_config = {**config.policy_config, "init_log_std": 0.0}
    train(config)

    def run(name, seed=10_000):
        return evaluate_checkpoint(EvalConfig(checkpoint=tmp_path / "run" / "best", episodes=3, num_envs=2,
                                              horizon=20, seed=seed, video_episodes=0, output_dir=tmp_path / name,
                                              progress=False))

    first, second, other = run("a"), run("b"), run("c", seed=10_001)
    for key in ("successes", "lengths", "seeds", "action_digests"):
        assert first[key] == second[key], key
    assert first["lengths"] == [20, 20, 20]
    if policy != "gaussian":  # the Gaussian policy acts on its mean: deterministic whatever the noise
        assert first["action_digests"][1] != other["action_digests"][0]  # same env seed 10001, other noise


def test_all_successes_plot_without_error(tmp_path):
    """6/6 successes: the Wilson upper bound rounds below the rate; the summary plot must still be drawn."""
    from robo.evaluate import EvalResult, plot_summary

    result = EvalResult(1.0, wilson_interval(6, 6), 6, [True] * 6, [50] * 6, list(range(6)))
    plot_summary(result, "Lift", tmp_path / "summary.png")
    assert (tmp_path / "summary.png").stat().st_size > 5_000


def test_wilson_interval():
    assert wilson_interval(50, 50)[0] > 0.92 and wilson_interval(50, 50)[1] == 1.0
    lo, hi = wilson_interval(45, 50)
    assert 0.78 < lo < 0.80 and 0.95 < hi < 0.97


def test_ict_curriculum_spans_the_run_it_is_trained_in(tmp_path, lift_demos):
    """The iCT presets' curriculum_steps -1 means the run's --steps, fixed in the saved config (so a resumed or
    longer run keeps the curriculum it started with)."""
    from policies.checkpoint import read_config

    config = build_config("lowdim_consistency_ict", {"dataset": lift_demos, "output_dir": tmp_path / "ict",
                                                     "steps": 6, "batch_size": 8, "val_every": 6, "val_ratio": 0.25,
                                                     "eval_episodes": 0, "progress": False})
    config.policy_config = {**config.policy_config, **TINY}
    assert config.policy_config["curriculum_steps"] == -1
    train(config)
    assert read_config(tmp_path / "ict" / "best")["policy_config"]["curriculum_steps"] == 6


def test_distil_into_a_student_with_its_own_network(tmp_path, lift_demos):
    """Preset distill_mlp: the student keeps the teacher's (frozen) encoder and gets a fresh MLP denoiser."""
    from policies.checkpoint import load_checkpoint
    from policies.denoisers import MLPDenoiser

    common = {"dataset": lift_demos, "obs_keys": LOWDIM, "steps": 4, "batch_size": 8, "val_every": 4,
              "val_ratio": 0.25, "eval_episodes": 0, "progress": False}
    teacher_cfg = build_config("lowdim_diffusion", {**common, "output_dir": tmp_path / "teacher"})
    teacher_cfg.policy_config = {**teacher_cfg.policy_config, **TINY}
    train(teacher_cfg)
    student_cfg = build_config("distill_mlp", {**common, "output_dir": tmp_path / "student",
                                              "teacher": tmp_path / "teacher" / "best"})
    student_cfg.policy_config = {"denoiser": {"kind": "mlp", "mlp_hidden": 32, "mlp_layers": 2}}
    train(student_cfg)
    teacher, student = load_checkpoint(tmp_path / "teacher" / "best"), load_checkpoint(tmp_path / "student" / "best")
    assert isinstance(student.denoiser, MLPDenoiser) and student.config.mode == "distilled"
    for a, b in zip(student.encoder.state_dict().values(), teacher.encoder.state_dict().values()):
        assert torch.equal(a, b)
    obs = {k: np.zeros((1, 2, *student.spec.obs_keys[k][0]), dtype=student.spec.obs_keys[k][1]) for k in LOWDIM}
    assert student.predict(obs).shape == (1, 16, 7)
