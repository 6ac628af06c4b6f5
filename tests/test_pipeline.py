"""``robo pipeline``: a re-run resumes (finished stages skipped) or, with other options, starts a new run folder
beside the first, and says which in one line. The runner's logic is tested with cheap stand-in stages; the real
record and validate stages with an interrupted recording; every stage on a tiny budget under ``-m slow`` (the
improve stage alone takes minutes on a 2-core machine); the finetune stage's checkpoint choice, scaling, resume and
failed gate with a stand-in for ``robo finetune``."""

import json
import subprocess
import sys

import pytest

import robo.pipeline as pipeline
from robo.pipeline import PipelineConfig, Stage, run_pipeline


def robo(*args):
    return subprocess.run([sys.executable, "-m", "robo.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


REAL_STAGES = {s.name: s for s in pipeline.STAGES}


def test_an_interrupted_recording_is_topped_up_then_validated(tmp_path, monkeypatch, capsys):
    """The real record and validate stages: a recording that died after one of two demonstrations resumes with the
    next seed instead of starting over or recording too many."""
    from robo.collect import CollectConfig, collect
    from robo.data.store import ZarrDataset

    def record_one_then_die(config, run):
        collect(CollectConfig(output=run.out / "lift_demos.zarr", episodes=1, seed=config.seed, progress=False))
        raise SystemExit("recorder killed after one demonstration")

    config = PipelineConfig(output_dir=tmp_path / "pipe", demos=2, progress=False)
    monkeypatch.setattr(pipeline, "STAGES", [Stage("record", "recording", record_one_then_die), REAL_STAGES["validate"]])
    with pytest.raises(SystemExit, match="recorder killed"):
        run_pipeline(config)
    capsys.readouterr()
    monkeypatch.setattr(pipeline, "STAGES", [REAL_STAGES["record"], REAL_STAGES["validate"]])
    summary = run_pipeline(config)
    out = capsys.readouterr().out
    assert out.startswith(f"resuming {tmp_path / 'pipe'}: its record stage did not finish; continuing it")
    assert "already holds 1 episodes" in out and summary["episodes"] == 2 and summary["dataset_ok"]
    with ZarrDataset.open(summary["dataset"]) as ds:
        assert [e.seed for e in ds.episodes] == [0, 1]
    run_pipeline(config)
    assert capsys.readouterr().out.startswith(f"every stage of {tmp_path / 'pipe'} finished earlier")


@pytest.mark.slow
def test_pipeline_runs_every_stage_then_a_rerun_skips_them(tmp_path):
    out = tmp_path / "pipe"
    summary = run_pipeline(PipelineConfig(output_dir=out, demos=2, train_steps=4, distill_steps=2, eval_episodes=1,
                                          progress=False))
    assert summary["dataset_ok"] and summary["episodes"] == 2 and summary["demo_success_rate"] == 1.0
    assert set(summary["eval"]) == {"diffusion_ddim10", "onestep"}
    # The finetune stage refined improve's accepted checkpoint, distilled it and gated the student. With this
    # budget the gate runs on 2 episodes, so it must say it could not pass (no artifact) rather than ship one.
    f = summary["finetune"]
    assert f["checkpoint"] == str(out / "improve" / "accepted") and f["env_steps"] >= 96
    for key in ("success_before", "success_after", "student_success", "teacher_success", "gate_reason"):
        assert f[key] is not None, key
    assert f["gate_episodes"] == 2 and not f["gate_passed"] and "the gate needs at least 100" in f["gate_reason"]
    assert f["artifact"] is None and f["no_artifact"].startswith("the student gate failed")
    assert json.loads((out / "finetune" / "report.json").read_text())["student_gate"]["reason"] == f["gate_reason"]
    for name in ("diffusion/best", "onestep/best", "eval_onestep/results.json", "summary.json",
                 "finetune/ppo/best", "finetune/ppo/last", "finetune/student/best",
                 *(f"stages/{s.name}.json" for s in pipeline.STAGES)):
        assert (out / name).exists(), name
    # The README's command a second time: every stage is skipped, one line says so, the summary is the same.
    again = robo("pipeline", "--output-dir", out, "--demos", 2, "--train-steps", 4, "--distill-steps", 2,
                 "--eval-episodes", 1, "--no-progress")
    assert again.returncode == 0, again.stderr
    lines = again.stdout.strip().splitlines()
    assert lines[0].startswith(f"every stage of {out} finished earlier") and len(lines) == 2
    assert json.loads(lines[-1])["eval"] == json.loads(json.dumps(summary["eval"]))
    assert json.loads(lines[-1])["finetune"] == json.loads(json.dumps(f))


def _fake_stages(calls, fail_at=None):
    def make(name):
        def run(config, run_state):
            calls.append(name)
            if name == fail_at:
                raise RuntimeError(f"{name} crashed")
            (run_state.out / f"{name}.out").write_text(name)
            return {name: len(calls)}
        return Stage(name, f"stage {name}", run)
    return [make(n) for n in ("a", "b", "c")]


def test_an_interrupted_run_resumes_at_the_stage_that_did_not_finish(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(pipeline, "STAGES", _fake_stages(calls, fail_at="b"))
    config = PipelineConfig(output_dir=tmp_path / "pipe", demos=3)
    with pytest.raises(RuntimeError, match="b crashed"):
        run_pipeline(config)
    assert calls == ["a", "b"] and (tmp_path / "pipe/stages/a.json").is_file()
    assert not (tmp_path / "pipe/stages/b.json").exists()
    capsys.readouterr()

    monkeypatch.setattr(pipeline, "STAGES", _fake_stages(calls))
    summary = run_pipeline(config)
    assert calls == ["a", "b", "b", "c"]  # a was not run again
    first = capsys.readouterr().out.splitlines()[0]
    assert first == f"resuming {tmp_path / 'pipe'}: a finished earlier; continuing from b"
    assert summary["a"] == 1 and summary["c"] == 4  # a's figures come from its record


def test_other_options_or_new_run_start_a_new_folder_and_leave_the_first(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(pipeline, "STAGES", _fake_stages(calls))
    base = tmp_path / "pipe"
    run_pipeline(PipelineConfig(output_dir=base, demos=3))
    capsys.readouterr()
    summary = run_pipeline(PipelineConfig(output_dir=base, demos=4))
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith(f"{base} was run with other options (demos=3 (now 4)); starting a new run in {base}-2")
    assert summary["run_dir"] == str(tmp_path / "pipe-2") and (tmp_path / "pipe-2/stages/c.json").is_file()
    assert json.loads((base / "pipeline.json").read_text())["options"]["demos"] == 3
    run_pipeline(PipelineConfig(output_dir=base, demos=3, new_run=True))
    assert capsys.readouterr().out.splitlines()[0].startswith(f"--new-run: starting a new pipeline run in {base}-3")
    assert calls == ["a", "b", "c"] * 3


def test_a_folder_that_is_not_a_pipeline_run_is_left_alone(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(pipeline, "STAGES", _fake_stages([]))
    (tmp_path / "pipe").mkdir()
    (tmp_path / "pipe" / "mine.txt").write_text("keep")
    summary = run_pipeline(PipelineConfig(output_dir=tmp_path / "pipe"))
    assert summary["run_dir"] == str(tmp_path / "pipe-2") and (tmp_path / "pipe/mine.txt").read_text() == "keep"
    assert "not written by a pipeline run" in capsys.readouterr().out.splitlines()[0]


# ------------------------------------------------------------------------------- the finetune stage, with stand-ins


def _finetune_stand_in(monkeypatch, passed=True, episodes=100):
    """Replace robo.finetune.finetune by a recorder that returns a report of the given verdict."""
    import robo.finetune as ft

    seen = []

    def fake(cfg):
        seen.append(cfg)
        report = {"ppo": {"env_steps": cfg.env_steps, "iterations": 3, "success_before": 0.4, "success_after": 0.6,
                          "best_success": 0.6, "eval_episodes": cfg.eval_episodes, "ppo_steps_per_s": 30.0},
                  "student_gate": ft.gate_decision([True] * episodes, [passed] * episodes, cfg.gate_margin)}
        if report["student_gate"]["passed"]:
            report["artifact"] = {"path": str(cfg.output_dir / "artifact"), "content_sha256": "ab" * 32}
        return report

    monkeypatch.setattr(ft, "finetune", fake)
    return seen


def _run_after_improve(tmp_path, improve, **options):
    run = pipeline.PipelineRun(out=tmp_path / "pipe")
    run.results = {"record": {"dataset": str(tmp_path / "pipe" / "lift_demos.zarr")}, "improve": {"improve": improve}}
    return PipelineConfig(output_dir=run.out, **options), run


def test_finetune_stage_refines_improves_accepted_checkpoint_at_full_scale(tmp_path, monkeypatch, capsys):
    seen = _finetune_stand_in(monkeypatch)
    accepted = tmp_path / "pipe" / "improve" / "accepted"
    config, run = _run_after_improve(tmp_path, {"accepted": str(accepted)})
    figures = pipeline.finetune_stage(config, run)["finetune"]
    (cfg,) = seen
    assert cfg.checkpoint == accepted  # not diffusion/best: the improved policy is the one refined
    assert cfg.output_dir == run.out / "finetune" and cfg.dataset == run.dataset and cfg.task == "Lift"
    assert (cfg.env_steps, cfg.chunks_per_iter, cfg.minibatch_size) == (20_480, 32, 128)
    assert (cfg.distill_steps, cfg.gate_episodes, cfg.eval_episodes) == (1000, 100, 50)
    assert cfg.gate_episodes >= 100 and cfg.export and not cfg.resume
    assert figures["checkpoint"] == str(accepted) and "note" not in figures
    assert figures["gate_passed"] and figures["artifact"] == str(run.out / "finetune" / "artifact")
    assert figures["artifact_sha256"] == "ab" * 32 and "no_artifact" not in figures
    assert (figures["success_before"], figures["success_after"], figures["env_steps"]) == (0.4, 0.6, 20_480)
    out = capsys.readouterr().out
    assert "validation success 0.40 -> 0.60" in out and "artifact " in out


def test_finetune_stage_falls_back_to_the_teacher_scales_down_and_resumes(tmp_path, monkeypatch, capsys):
    seen = _finetune_stand_in(monkeypatch, episodes=2)
    config, run = _run_after_improve(tmp_path, {"skipped": "image observations"}, train_steps=4, eval_episodes=1)
    (run.out / "finetune" / "ppo" / "last").mkdir(parents=True)  # an interrupted stage's PPO state
    figures = pipeline.finetune_stage(config, run)["finetune"]
    (cfg,) = seen
    assert cfg.checkpoint == run.out / "diffusion" / "best"
    assert "image observations" in figures["note"] and "image observations" in capsys.readouterr().out
    assert cfg.resume  # continues ppo/last rather than refusing or starting over
    assert (cfg.env_steps, cfg.chunks_per_iter, cfg.distill_steps, cfg.gate_episodes) == (96, 2, 2, 2)
    # Two gate episodes cannot pass: the figures say so instead of pretending.
    assert not figures["gate_passed"] and figures["artifact"] is None and figures["artifact_sha256"] is None
    assert "the gate needs at least 100" in figures["gate_reason"]
    assert "train_steps / 3000" in figures["no_artifact"]


def test_a_failed_student_gate_is_recorded_in_the_summary_not_raised(tmp_path, monkeypatch):
    _finetune_stand_in(monkeypatch, passed=False)
    accepted = tmp_path / "improve" / "accepted"
    stages = [Stage("record", "r", lambda c, r: {"dataset": str(tmp_path / "d.zarr")}),
              Stage("improve", "i", lambda c, r: {"improve": {"accepted": str(accepted)}}), REAL_STAGES["finetune"]]
    monkeypatch.setattr(pipeline, "STAGES", stages)
    summary = run_pipeline(PipelineConfig(output_dir=tmp_path / "pipe", progress=False))
    f = summary["finetune"]
    assert f["checkpoint"] == str(accepted) and not f["gate_passed"] and f["artifact"] is None
    assert "below the teacher" in f["gate_reason"] and f["no_artifact"].startswith("the student gate failed: student")
    assert json.loads((tmp_path / "pipe" / "summary.json").read_text())["finetune"]["gate_reason"] == f["gate_reason"]
    assert (tmp_path / "pipe" / "stages" / "finetune.json").is_file()


def test_a_run_recorded_before_the_finetune_options_existed_resumes(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(pipeline, "STAGES", _fake_stages(calls))
    base = tmp_path / "pipe"
    run_pipeline(PipelineConfig(output_dir=base))
    record = json.loads((base / "pipeline.json").read_text())
    record["options"] = {k: v for k, v in record["options"].items() if not k.startswith("finetune_")}
    (base / "pipeline.json").write_text(json.dumps(record))
    (base / "stages" / "c.json").unlink()
    capsys.readouterr()
    run_pipeline(PipelineConfig(output_dir=base))
    assert capsys.readouterr().out.splitlines()[0] == f"resuming {base}: a, b finished earlier; continuing from c"
    run_pipeline(PipelineConfig(output_dir=base, finetune_env_steps=512))  # a non-default value is a new run
    assert calls == ["a", "b", "c", "c", "a", "b", "c"]
