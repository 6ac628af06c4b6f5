"""The whole refinement path on the real simulator at a tiny budget: BC checkpoint -> chain PPO in sub-process Lift
envs -> distillation -> student gate -> (refused) export -> artifact loaded for the sim's observation space."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow

TINY = {"denoiser": {"kind": "unet", "widths": [16, 32], "groups": 4},
        "encoder": {"lowdim_hidden": 32, "lowdim_features": 16}}


def test_finetune_distil_gate_export_on_lift(tmp_path):
    from policies.artifact import load_artifact
    from robo.collect import CollectConfig, collect
    from robo.export import ExportConfig, ExportError, export
    from robo.finetune import FinetuneConfig, finetune
    from robo.train import build_config, train
    from sim.env import EnvConfig, SimEnv

    demos = tmp_path / "lift.zarr"
    collect(CollectConfig(output=demos, task="Lift", episodes=3, progress=False))
    config = build_config(None, {"dataset": demos, "output_dir": tmp_path / "bc", "steps": 20, "batch_size": 32,
                                 "eval_episodes": 0, "progress": False, "threads": 1})
    config.policy_config = TINY
    train(config)

    out = tmp_path / "ft"
    report = finetune(FinetuneConfig(checkpoint=tmp_path / "bc" / "best", output_dir=out, env_steps=128,
                                     chunks_per_iter=4, epochs=1, minibatch_size=8, value_warmup_iters=1,
                                     eval_every=0, eval_episodes=2, distill_steps=4, gate_episodes=2,
                                     progress=False))
    ppo = report["ppo"]
    assert ppo["env_steps"] == 128 and ppo["iterations"] == 2 and ppo["steps_per_s_ratio"] > 0
    assert (out / "ppo" / "success_curve.png").stat().st_size > 0
    gate = json.loads((out / "report.json").read_text())["student_gate"]
    assert gate["passed"] is False and "at least 100" in gate["reason"] and gate["episodes"] == 2
    assert not (out / "artifact").exists()
    with pytest.raises(ExportError, match="does not ship"):
        export(ExportConfig(checkpoint=out / "student" / "best", output=tmp_path / "art",
                            gate_report=out / "report.json"))

    # Without a gate report (an operator's explicit choice) the student exports, with its whole history.
    manifest = export(ExportConfig(checkpoint=out / "student" / "best", output=tmp_path / "art"))
    names = [s["name"] for s in manifest["provenance"]["stages"]]
    assert names[0] == "consistency" and "online_ppo_chain" in names and names[-1] == "diffusion", names
    env = SimEnv(EnvConfig(task="Lift"))
    try:
        space = env.observation_space
        policy, read = load_artifact(tmp_path / "art", expect_obs={k: space[k] for k in space.spaces},
                                     expect_action_dim=env.action_space.shape[0], expect_control_rate_hz=20.0)
    finally:
        env.close()
    assert read["content_sha256"] == manifest["content_sha256"] and policy.kind == "consistency"
