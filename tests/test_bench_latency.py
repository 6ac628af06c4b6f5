"""``robo bench latency`` runs end to end (a few calls per row) and reports every policy it times."""

import json

from robo.bench.latency import LatencyBenchConfig, run_latency_bench


def test_latency_bench_times_teacher_and_both_students(capsys):
    figures = run_latency_bench(LatencyBenchConfig(calls=3, warmup=1))
    lines = capsys.readouterr().out.strip().splitlines()
    assert json.loads(lines[-1]) == figures  # the JSON line comes last
    for key in ("ddim10_ms", "onestep_ms", "onestep_mlp_ms", "onestep_rgb_ms", "ddpm100_ms"):
        assert figures[key] > 0, key
    table = "\n".join(lines[:-1])
    assert "one-step student (UNet)" in table and "one-step student (MLP)" in table
    # The MLP student is the distill_mlp preset's network (3 x 512 hidden), not the UNet's 0.61M parameters.
    assert 0.5 < figures["mlp_student_params_m"] < 1.0 and figures["mlp_student_params_m"] != figures["denoiser_params_m"]
