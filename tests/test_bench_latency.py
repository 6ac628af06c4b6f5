"""``robo bench latency`` runs end to end (a few calls per row) and reports every policy it times."""

import json

from robo.bench.latency import LatencyBenchConfig, run_latency_bench


def test_latency_bench_times_teacher_and_both_students(capsys):
    figures = run_latency_bench(LatencyBenchConfig(calls=3, warmup=1))
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last) == figures
    for key in ("ddim10_ms", "onestep_ms", "onestep_mlp_ms", "onestep_rgb_ms", "ddpm100_ms"):
        assert figures[key] > 0, key
    assert figures["speedup"] == figures["ddim10_ms"] / figures["onestep_ms"]
    assert figures["speedup_mlp"] == figures["ddim10_ms"] / figures["onestep_mlp_ms"]
