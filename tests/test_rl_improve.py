"""``robo improve`` end to end on a tiny dataset and policy, and its one-line refusals that write nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from policies.checkpoint import save_checkpoint
from robo.cli import main
from robo.data.schema import ArraySpec, DatasetSchema, EpisodeInfo
from robo.data.store import ZarrDataset
from robo.rl.toy import tiny_policy

torch.set_num_threads(1)


def write_dataset(path, task="Toy", all_success=False, key="state"):
    schema = DatasetSchema(obs={key: ArraySpec((3,), "float32")}, action=ArraySpec((2,), "float32"), fps=20.0,
                           task=task)
    rng = np.random.default_rng(0)
    with ZarrDataset.create(path, schema) as ds:
        for i in range(8):
            n = 12
            ok = all_success or i % 2 == 0
            flags = np.zeros(n, bool)
            flags[-1] = ok
            trunc = np.zeros(n, bool)
            trunc[-1] = not ok
            ds.append_episode({key: rng.normal(size=(n, 3)).astype(np.float32),
                               "action": rng.uniform(-1, 1, (n, 2)).astype(np.float32),
                               "reward": flags.astype(np.float32), "terminal": flags, "truncated": trunc,
                               "success": flags, "timestamp": np.arange(n) / 20.0},
                              EpisodeInfo(source="scripted", success=ok))
    return path


@pytest.fixture()
def setup(tmp_path):
    ds = write_dataset(tmp_path / "d.zarr")
    ckpt = save_checkpoint(tmp_path / "bc", tiny_policy(), {"task": "Toy"})
    return tmp_path, ds, ckpt


SMALL = ["--state-keys", "state", "--rounds", "2", "--gate-every", "1", "--batch-size", "16", "--minibatch-size", "8",
         "--epochs", "1", "--critic-steps", "50", "--dynamics-steps", "30", "--amq-horizon", "2", "--amq-starts", "8",
         "--no-progress"]


def test_improve_runs_and_writes_its_artifacts(setup):
    tmp, ds, ckpt = setup
    out = tmp / "imp"
    assert main(["improve", "--checkpoint", str(ckpt), "--dataset", str(ds), "--output-dir", str(out), *SMALL]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["decisions"] == 2 and summary["accepted"] + summary["rejected"] == 2
    assert len((out / "decisions.jsonl").read_text().splitlines()) == 2
    for name in ("accepted/model.safetensors", "best/config.json", "critic/critic.json", "improve.png"):
        assert (out / name).exists(), name
    assert list((out / "tb").iterdir())
    # the saved critic is reusable on the dataset it was fitted on
    out2 = tmp / "imp2"
    assert main(["improve", "--checkpoint", str(ckpt), "--dataset", str(ds), "--output-dir", str(out2),
                 "--critic", str(out / "critic"), *SMALL]) == 0


def _refused(capsys, args, out):
    before = sorted(p.name for p in out.iterdir()) if out.exists() else None
    assert main(["improve", *args, "--output-dir", str(out), *SMALL]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert (sorted(p.name for p in out.iterdir()) if out.exists() else None) == before
    return err


def test_bad_inputs_get_one_line_and_nothing_is_written(setup, capsys):
    tmp, ds, ckpt = setup
    out = tmp / "never"
    assert "all 8 episodes succeed" in _refused(capsys, ["--checkpoint", str(ckpt), "--dataset",
                                                         str(write_dataset(tmp / "s.zarr", all_success=True))], out)
    assert "task 'Toy'" in _refused(capsys, ["--checkpoint", str(ckpt), "--dataset",
                                             str(write_dataset(tmp / "l.zarr", task="Lift"))], out)
    assert "observation keys" in _refused(capsys, ["--checkpoint", str(ckpt), "--dataset",
                                                   str(write_dataset(tmp / "k.zarr", key="eef_pos"))], out)
    # a critic fitted on another dataset
    fake = tmp / "critic"
    fake.mkdir()
    (fake / "critic.json").write_text(json.dumps({"dataset_fingerprint": "0000", "state_dim": 3, "action_dim": 8,
                                                  "config": {}}))
    (fake / "critic.safetensors").write_bytes(b"")
    assert "another dataset" in _refused(capsys, ["--checkpoint", str(ckpt), "--dataset", str(ds), "--critic",
                                                  str(fake)], out)
    # a non-empty output directory is never overwritten without --overwrite
    busy = tmp / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("x")
    assert "not empty" in _refused(capsys, ["--checkpoint", str(ckpt), "--dataset", str(ds)], busy)


def test_bench_improve_gates_every_arm_on_the_chosen_estimator(setup, monkeypatch):
    """The bench's arms (gated, ungated, Uni-O4) all trust the estimator it is given, and its figures are the
    arms' measured successes. Simulation is replaced by a lookup on the arm's folder: the toy task has no sim."""
    from robo.bench.improve import ImproveBenchConfig, run_improve_bench
    from robo.rl import improve

    tmp, ds, ckpt = setup
    truth = {"eval_before": 0.4, "eval_after": 0.55, "eval": 0.45}
    measured: list[str] = []

    def fake_true(policy, task, config, out):
        measured.append(f"{out.parent.name}/{out.name}")
        return truth[out.name] - (0.1 if out.parent.name == "ungated" else 0.0)

    monkeypatch.setattr(improve, "evaluate_true", fake_true)
    built: list[str] = []
    real_make = improve.make_estimator

    def recording_make(name, *args, **kwargs):
        built.append(name)
        return real_make(name, *args, **kwargs)

    monkeypatch.setattr(improve, "make_estimator", recording_make)
    out = tmp / "bench"
    figures = run_improve_bench(ImproveBenchConfig(
        checkpoint=ckpt, dataset=ds, episodes=100, rounds=2, gate_every=1, estimator="fqe", critic_steps=50,
        dynamics_steps=30, fqe_steps=40, amq_horizon=2, amq_starts=8, unio4_members=2, unio4_bc_steps=5,
        unio4_rounds=1, state_keys=("state",), output_dir=out, progress=False))
    assert measured == ["gated/eval_before", "gated/eval_after", "ungated/eval_after", "unio4/eval"]
    assert figures["estimator"] == "fqe"
    assert built == ["fqe"] * 3  # gated, ungated, Uni-O4
    assert (figures["success_bc"], figures["success_gated"], figures["success_ungated"],
            figures["success_unio4"]) == pytest.approx((0.4, 0.55, 0.45, 0.45))
    for arm in ("gated", "ungated"):
        assert json.loads((out / arm / "improve_config.json").read_text())["estimator"] == "fqe"
    assert json.loads((out / "results.json").read_text()) == pytest.approx(figures)


@pytest.mark.parametrize("gated", [True, False])
def test_flywheel_round_gate_keeps_the_shipped_policy_unless_the_candidate_is_better(setup, gated):
    """A candidate no better than the shipped policy (here: the same weights) does not replace it; with the gate
    off it does, and the record still says the gate would have refused."""
    from robo.rl.flywheel import gate_round
    from robo.rl.improve import ImproveConfig, run_improve

    tmp, ds, ckpt = setup
    cfg = ImproveConfig(checkpoint=ckpt, dataset=ds, output_dir=tmp / "imp", rounds=1, gate_every=1, batch_size=16,
                        minibatch_size=8, epochs=1, critic_steps=50, dynamics_steps=30, amq_horizon=2, amq_starts=8,
                        state_keys=("state",), gated=gated, progress=False)
    run_improve(cfg)
    verdict = gate_round(ckpt, ckpt, ds, tmp / "imp" / "critic", cfg)
    assert verdict["j_candidate"] == verdict["j_shipped"] != 0.0  # common random numbers: same policy, same score
    assert verdict["would_accept"] is False
    assert verdict["accepted"] is (not gated)
