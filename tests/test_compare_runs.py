"""`robo compare-runs`: online runs side by side (one PNG, a table, a JSON line of start / end / best validation
success), on runs the real trainer wrote on the toy reach env of test_online_ppo."""

from __future__ import annotations

import json

import numpy as np

from policies.checkpoint import save_checkpoint
from robo.finetune import FinetuneConfig, train_online
from test_online_ppo import toy_venv
from test_policies import build


def test_compare_runs_plots_and_tabulates_what_each_run_measured(tmp_path, capsys):
    from robo.cli import main

    scores = {"gaussian": [0.2, 0.3, 0.6], "diffusion-mlp": [0.4, 0.1, 0.3]}
    for kind, curve in scores.items():
        ckpt = save_checkpoint(tmp_path / f"bc_{kind}", build(kind, "lowdim"), {"task": "Reach", "fps": 20})
        cfg = FinetuneConfig(checkpoint=ckpt, output_dir=tmp_path / kind, env_steps=64, chunks_per_iter=4,
                             epochs=1, minibatch_size=4, value_warmup_iters=0, eval_every=1, eval_episodes=3,
                             progress=False)
        train_online(cfg, venv=toy_venv(2), evaluator=lambda policy, seed, n, name, c=curve: {
            "success_rate": c[int(name.removeprefix("iter"))]})
    png = tmp_path / "compare.png"
    assert main(["compare-runs", "--runs", str(tmp_path / "gaussian"), str(tmp_path / "diffusion-mlp" / "ppo"),
                 "--labels", "Gaussian PPO", "chain PPO", "--output", str(png)]) == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert png.stat().st_size > 0
    assert figures["runs"]["Gaussian PPO"] == {**figures["runs"]["Gaussian PPO"], "method": "gaussian",
                                              "env_steps": 64, "success_start": 0.2, "success_end": 0.6,
                                              "success_best": 0.6}
    assert figures["runs"]["chain PPO"]["method"] == "chain"
    assert (figures["runs"]["chain PPO"]["success_end"], figures["runs"]["chain PPO"]["success_best"]) == (0.3, 0.4)


def test_compare_runs_refuses_a_folder_without_a_finished_run_in_one_line(tmp_path, capsys):
    from robo.cli import main

    (tmp_path / "empty").mkdir()
    assert main(["compare-runs", "--runs", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "has no ppo/summary.json" in err


def test_trailing_mean_of_training_success_skips_iterations_without_episodes():
    from robo.compare_runs import trailing_mean

    nan = float("nan")
    out = trailing_mean([1.0, nan, 0.0, 0.5, nan, nan, nan], 3)
    assert out[:5] == [1.0, 1.0, 0.5, 0.25, 0.25] and out[5] == 0.5 and np.isnan(out[6])
    assert trailing_mean([0.2, 0.4], 1) == [0.2, 0.4]
