"""The soak's summary (robo/bench/soak.py): rates and medians of the first third against the last, whether misses
follow other processes' load, and the time-series plot, on samples whose answers are known."""

from __future__ import annotations

import json

import pytest

from robo.bench.soak import SECTIONS, host_cpu_counters, plot_soak, soak_rows, summarise


def samples(n: int = 30, missed_per_10s=lambda i: 2, others=lambda i: 5.0, decision_ms=lambda i: 1.0,
            node_cpu=lambda i: 20.0, probe_cpu=lambda i: 10.0):
    rows, missed = [], 0
    for i in range(n):
        missed += missed_per_10s(i) if i else 0
        rows.append({"t": 10.0 * (i + 1), "node_rss_mb": 800.0 + (i % 2), "mock_rss_mb": 600.0, "probe_rss_mb": 300.0,
                     "missed": missed, "overruns": i, "ticks": 1000 * (i + 1), "loop_p99_ms": 3.0, "plan_p99_ms": 2.0,
                     **{f"{k}_p99_ms": (decision_ms(i) if k == "decision" else 0.5) for k in SECTIONS},
                     "episodes": i // 3, "node_cpu_percent": node_cpu(i), "mock_cpu_percent": 30.0,
                     "probe_cpu_percent": probe_cpu(i), "host_busy_percent": 60.0 + others(i), "others_busy_percent": others(i),
                     "host_steal_percent": 0.1})
    return rows


def test_steady_run_has_equal_thirds_and_flat_memory():
    out = summarise(samples())
    assert out["ticks_per_s_first"] == pytest.approx(100.0) and out["ticks_per_s_last"] == pytest.approx(100.0)
    assert out["missed_per_min_first"] == pytest.approx(12.0) and out["missed_per_min_last"] == pytest.approx(12.0)
    assert out["overruns_per_min_first"] == pytest.approx(6.0)
    assert abs(out["rss_growth_percent"]) < 0.2
    assert out["missed_vs_others_busy_corr"] is None  # constant misses: no correlation to speak of


def test_rising_misses_are_told_apart_by_cause():
    # Misses rise with other processes' load while the node's own sections stay flat: a late wake-up.
    host = summarise(samples(missed_per_10s=lambda i: 1 + i // 5, others=lambda i: 5.0 + 3 * (i // 5)))
    assert host["missed_per_min_last"] > 2 * host["missed_per_min_first"]
    assert host["missed_vs_others_busy_corr"] > 0.9
    assert host["decision_p99_ms_last"] == host["decision_p99_ms_first"]
    # The node's own decision section grows while the host is quiet: its own work.
    own = summarise(samples(decision_ms=lambda i: 1.0 + 0.1 * i))
    assert own["decision_p99_ms_last"] > own["decision_p99_ms_first"] + 1.5


def test_the_node_is_measured_against_the_probe_in_the_same_run():
    # The host slows: the same work costs node and probe 30 % more CPU by the end, and misses follow.
    slow = lambda i: 1.0 + 0.01 * i  # noqa: E731
    host = summarise(samples(60, missed_per_10s=lambda i: int(10 * slow(i)) - 8, node_cpu=lambda i: 20.0 * slow(i),
                             probe_cpu=lambda i: 10.0 * slow(i)))
    assert host["node_vs_probe_cpu_change_percent"] == pytest.approx(0.0, abs=1e-6)
    assert host["missed_vs_probe_cpu_corr"] > 0.9 and host["corr_window_s"] == 60.0
    # The node's own cost per tick grows on a steady host: the ratio shows it.
    own = summarise(samples(60, node_cpu=lambda i: 20.0 * slow(i)))
    assert own["node_vs_probe_cpu_change_percent"] > 25
    assert own["missed_vs_probe_cpu_corr"] is None  # the probe's CPU did not move


def test_rows_and_plot(tmp_path):
    out = {**summarise(samples()), "minutes": 5.0, "plot": str(tmp_path / "soak.png")}
    rows = soak_rows(out, "MuJoCo sim mock at 100 Hz")
    assert any(r[0] == "ticks over their period" for r in rows) and all(len(r) == 3 for r in rows)
    json.dumps(out)  # the figures go to the JSON line
    plot_soak(samples(), tmp_path / "soak.png")
    assert (tmp_path / "soak.png").stat().st_size > 10_000


def test_host_counters_move():
    import time

    busy, steal, total = host_cpu_counters()
    assert 0 <= steal <= total and 0 <= busy <= total
    time.sleep(0.1)  # 10+ clock ticks on every core
    later = host_cpu_counters()
    assert later[2] > total and later[0] >= busy
