"""``robo pipeline``: a re-run resumes (finished stages skipped) or, with other options, starts a new run folder
beside the first, and says which in one line. The runner's logic is tested with cheap stand-in stages; the real
record and validate stages with an interrupted recording; every stage on a tiny budget under ``-m slow`` (the
improve stage alone takes minutes on a 2-core machine)."""

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
    for name in ("diffusion/best", "onestep/best", "eval_onestep/results.json", "summary.json",
                 *(f"stages/{s.name}.json" for s in pipeline.STAGES)):
        assert (out / name).exists(), name
    # The README's command a second time: every stage is skipped, one line says so, the summary is the same.
    again = robo("pipeline", "--output-dir", out, "--demos", 2, "--train-steps", 4, "--distill-steps", 2,
                 "--eval-episodes", 1, "--no-progress")
    assert again.returncode == 0, again.stderr
    lines = again.stdout.strip().splitlines()
    assert lines[0].startswith(f"every stage of {out} finished earlier") and len(lines) == 2
    assert json.loads(lines[-1])["eval"] == json.loads(json.dumps(summary["eval"]))


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
