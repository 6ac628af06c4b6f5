"""``robo bench node --minutes N``: the policy node at 100 Hz for N minutes, against the MuJoCo sim mock (as
deployed) or the probe's synthetic state, through real DDS.

Every 10 s it samples the node's diagnostics (ticks, missed deadlines, overruns, loop and per-section p99, plan
p99), the resident memory of every process involved (node with its planner process, sim mock, this probe) and the
host's CPU counters (/proc/stat: busy and steal time, i.e. what other tenants of a virtual machine took). The result
compares the first third of the run with the last, and ``soak.json`` (every sample) and ``soak.png`` (the time
series) go to the output folder, so a rising miss rate can be told apart: ticks that overran their period (the
node's own work grew) against timer wake-ups that came late (the host did not schedule the node in time).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

SAMPLE_S = 10.0
WINDOW_SAMPLES = 6  # correlations pool one minute of samples
SECTIONS = ("inputs", "observation", "decision", "publish")


def host_cpu_counters() -> tuple[float, float, float]:
    """(busy, steal, total) jiffies of the whole host from /proc/stat."""
    fields = [float(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    steal = fields[7] if len(fields) > 7 else 0.0
    total = sum(fields[:8])
    return total - idle - steal, steal, total


def process_cpu_s(pid: int, children: bool = True) -> float:
    """User + system CPU seconds of ``pid`` and, with ``children``, its direct children (the node's planner)."""
    total = 0.0
    pids = [pid]
    try:
        pids += [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()] if children else []
    except OSError:
        pass
    for one in pids:
        try:
            fields = Path(f"/proc/{one}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:  # a child that just exited
            pass
    return total


def own_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def soak(nut: Any, minutes: float, output_dir: Path | None = None) -> dict[str, Any]:
    """``nut``: a :class:`robo.bench.node.NodeUnderTest`. Returns the figures; writes soak.json and soak.png under
    ``output_dir`` when given."""
    t0 = time.monotonic()
    samples: list[dict[str, Any]] = []
    next_state, next_sample = t0, t0 + SAMPLE_S
    def ours() -> np.ndarray:  # CPU seconds of every process in this run: node (+ planner), mock, this probe
        return np.array([process_cpu_s(nut.proc.proc.pid), process_cpu_s(nut.mock.proc.pid) if nut.mock else 0.0,
                         process_cpu_s(os.getpid(), children=False)])

    cpu_before, ours_before = host_cpu_counters(), ours()
    clock_ticks_per_s = os.sysconf("SC_CLK_TCK")  # /proc/stat counts in these
    with tqdm(total=int(minutes * 60), desc="soak", unit="s", disable=not sys.stderr.isatty()) as bar:
        while time.monotonic() - t0 < minutes * 60:
            if time.monotonic() >= next_state:
                nut.publish_valid()
                next_state += 1.0 / 200.0
            if time.monotonic() >= next_sample:
                d = nut.probe.diagnostics[-1] if nut.probe.diagnostics else {}
                cpu_now, ours_now = host_cpu_counters(), ours()
                span = max(1e-9, cpu_now[2] - cpu_before[2])
                busy = 100 * (cpu_now[0] - cpu_before[0]) / span
                # This run's processes as a share of all cores over the same interval.
                node_cpu, mock_cpu, probe_cpu = 100 * (ours_now - ours_before) * clock_ticks_per_s / span
                own = node_cpu + mock_cpu + probe_cpu
                sections = d.get("loop_sections_ms_p99", {})
                samples.append({
                    "t": time.monotonic() - t0, "node_rss_mb": nut.proc.rss_mb(),
                    "mock_rss_mb": nut.mock.rss_mb() if nut.mock else 0.0, "probe_rss_mb": own_rss_mb(),
                    "missed": d.get("missed_deadlines", 0), "overruns": d.get("overruns", 0),
                    "ticks": d.get("ticks", 0), "loop_p99_ms": d.get("loop_ms_p99", float("nan")),
                    "plan_p99_ms": d.get("plan_ms_p99", float("nan")),
                    **{f"{k}_p99_ms": sections.get(k, float("nan")) for k in SECTIONS},
                    "episodes": len(nut.probe.episodes),
                    "node_cpu_percent": node_cpu, "mock_cpu_percent": mock_cpu, "probe_cpu_percent": probe_cpu,
                    "host_busy_percent": busy, "others_busy_percent": max(0.0, busy - own),
                    "host_steal_percent": 100 * (cpu_now[1] - cpu_before[1]) / span})
                cpu_before, ours_before = cpu_now, ours_now
                next_sample += SAMPLE_S
                for kept in (nut.probe.commands, nut.probe.sent, nut.probe.poses):
                    kept.clear()  # keep the probe's own memory flat: it is measured too
                del nut.probe.diagnostics[:-1]
                bar.update(int(SAMPLE_S))
            time.sleep(max(0.0, min(next_state, next_sample) - time.monotonic()))
    if len(samples) < 4:
        raise ValueError(f"a soak needs at least 4 samples ({SAMPLE_S:.0f} s apart), got {len(samples)}; "
                         f"pass --minutes 0.7 or more")
    result = summarise(samples, has_mock=nut.mock is not None)
    result["minutes"] = minutes
    if output_dir is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "soak.json").write_text(json.dumps({"figures": result, "samples": samples}, indent=1))
        plot_soak(samples, output_dir / "soak.png")
        result["plot"] = str(output_dir / "soak.png")
    return result


def summarise(samples: list[dict[str, Any]], has_mock: bool = True) -> dict[str, Any]:
    """First third against last third of the run: rates of counters, medians of the sampled p99s and CPU."""
    col = {k: np.array([s[k] for s in samples], float) for k in samples[0]}
    t = col["t"]
    third = max(2, len(samples) // 3)  # rates need two samples per part
    first, last = slice(0, third), slice(len(samples) - third, len(samples))

    def rate(name: str, part: slice) -> float:
        a, b = part.start, part.stop - 1
        return float((col[name][b] - col[name][a]) / max(1e-9, t[b] - t[a])) if b > a else 0.0

    def median(name: str, part: slice) -> float:
        return median_of(col[name][part])

    def growth(name: str) -> tuple[float, float, float]:
        start = col[name][:max(1, len(samples) // 10)].mean()  # after warm-up allocations settle
        return float(start), float(col[name][-1]), float((col[name][-1] - start) / max(start, 1e-9) * 100)

    node, mock, probe = growth("node_rss_mb"), growth("mock_rss_mb"), growth("probe_rss_mb")
    out: dict[str, Any] = {
        "rss_first_mb": node[0], "rss_last_mb": node[1], "rss_growth_percent": node[2],
        "mock_rss_first_mb": mock[0], "mock_rss_last_mb": mock[1], "mock_rss_growth_percent": mock[2] if has_mock else None,
        "probe_rss_growth_percent": probe[2],
        "missed": int(col["missed"][-1]), "overruns": int(col["overruns"][-1]), "ticks": int(col["ticks"][-1]),
        "episodes": int(col["episodes"][-1])}
    for name, part in (("first", first), ("last", last)):
        out[f"missed_per_min_{name}"] = rate("missed", part) * 60
        out[f"overruns_per_min_{name}"] = rate("overruns", part) * 60
        out[f"ticks_per_s_{name}"] = rate("ticks", part)
        for key in ("loop", "plan", *SECTIONS):
            out[f"{key}_p99_ms_{name}"] = median(f"{key}_p99_ms", part)
        out[f"host_busy_percent_{name}"] = median("host_busy_percent", part)
        out[f"host_steal_percent_{name}"] = median("host_steal_percent", part)
        for who in ("others_busy", "node_cpu", "mock_cpu", "probe_cpu"):
            out[f"{who}_percent_{name}"] = median(f"{who}_percent", part)
    # Whether misses follow the load of processes outside this run (a late wake-up: the host did not schedule the
    # node in time): correlation of each sample's misses with the others' CPU over the same 10 s.
    per_sample = np.diff(col["missed"])
    out["missed_vs_others_busy_corr"] = _corr(per_sample, col["others_busy_percent"][1:])
    # A baseline in the same run: the probe does the same work every second for the whole soak (200 Hz of state,
    # or listening to the mock's 100 Hz, in rclpy like the node), so its CPU is a gauge of the host's speed for
    # this kind of process. The node's CPU relative to it changes only if the node's own cost per tick drifts; a
    # host that slows down raises both, and misses that follow the probe's CPU follow the host.
    ratio = col["node_cpu_percent"] / np.maximum(col["probe_cpu_percent"], 1e-9)
    out["node_vs_probe_cpu_first"], out["node_vs_probe_cpu_last"] = median_of(ratio[first]), median_of(ratio[last])
    out["node_vs_probe_cpu_change_percent"] = 100 * (out["node_vs_probe_cpu_last"] / out["node_vs_probe_cpu_first"] - 1)
    window = min(WINDOW_SAMPLES, max(1, len(per_sample) // 4))  # misses are a few per sample: pool them
    n = len(per_sample) // window
    missed_pooled = per_sample[:n * window].reshape(n, window).sum(1)
    probe_pooled = col["probe_cpu_percent"][1:][:n * window].reshape(n, window).mean(1)
    out["missed_vs_probe_cpu_corr"] = _corr(missed_pooled, probe_pooled)
    out["corr_window_s"] = window * SAMPLE_S
    return out


def median_of(values: np.ndarray) -> float:
    return float(np.nanmedian(values)) if np.isfinite(values).any() else float("nan")


def _corr(a: np.ndarray, b: np.ndarray) -> float | None:
    return float(np.corrcoef(a, b)[0, 1]) if len(a) > 2 and a.std() > 0 and b.std() > 0 else None


def soak_rows(result: dict[str, Any], peer: str) -> list[tuple[str, str, str]]:
    rows = [("soak minutes at 100 Hz", f"{result['minutes']:.1f}",
             f"{result['ticks']} ticks against the {peer}, {result['episodes']} episodes"),
            ("node resident memory", f"{result['rss_growth_percent']:+.1f} %",
             f"{result['rss_first_mb']:.0f} -> {result['rss_last_mb']:.0f} MB (with its planner process)"),
            ("ticks per second", f"{result['ticks_per_s_first']:.2f} -> {result['ticks_per_s_last']:.2f}",
             "first third -> last third"),
            ("missed deadlines", str(result["missed"]),
             f"per minute: first third {result['missed_per_min_first']:.1f}, last third {result['missed_per_min_last']:.1f}"),
            ("ticks over their period", str(result["overruns"]),
             f"per minute: first third {result['overruns_per_min_first']:.1f}, "
             f"last third {result['overruns_per_min_last']:.1f}"),
            ("node loop p99", f"{result['loop_p99_ms_first']:.2f} -> {result['loop_p99_ms_last']:.2f} ms",
             "median of the diagnostics' p99, first third -> last third"),
            ("tick sections p99", ", ".join(f"{k} {result[f'{k}_p99_ms_first']:.2f}->{result[f'{k}_p99_ms_last']:.2f}"
                                            for k in SECTIONS), "ms, first third -> last third"),
            ("host CPU busy / steal", f"{result['host_busy_percent_first']:.0f} -> {result['host_busy_percent_last']:.0f} % / "
             f"{result['host_steal_percent_first']:.1f} -> {result['host_steal_percent_last']:.1f} %",
             "all cores, /proc/stat; steal = taken by other guests of the host"),
            ("CPU of other processes", f"{result['others_busy_percent_first']:.1f} -> {result['others_busy_percent_last']:.1f} %",
             f"host busy minus this run's processes; misses vs it: correlation "
             f"{_fmt(result['missed_vs_others_busy_corr'])}"),
            ("CPU of node / mock / probe", " / ".join(f"{result[f'{w}_cpu_percent_first']:.1f}->{result[f'{w}_cpu_percent_last']:.1f}"
                                                     for w in ("node", "mock", "probe")), "% of all cores, first third -> last third"),
            ("node CPU / probe CPU", f"{result['node_vs_probe_cpu_first']:.3f} -> {result['node_vs_probe_cpu_last']:.3f} "
             f"({result['node_vs_probe_cpu_change_percent']:+.1f} %)",
             f"the node's own cost against a fixed-work rclpy process; misses vs the probe's CPU: correlation "
             f"{_fmt(result['missed_vs_probe_cpu_corr'])} over {result['corr_window_s']:.0f} s windows")]
    if result.get("mock_rss_growth_percent") is not None:
        rows.append(("sim mock resident memory", f"{result['mock_rss_growth_percent']:+.1f} %",
                     f"{result['mock_rss_first_mb']:.0f} -> {result['mock_rss_last_mb']:.0f} MB"))
    if result.get("plot"):
        rows.append(("time series", result["plot"], "and soak.json beside it"))
    return rows


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.2f}"


def plot_soak(samples: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    col = {k: np.array([s[k] for s in samples], float) for k in samples[0]}
    minutes = col["t"] / 60
    mid = (minutes[1:] + minutes[:-1]) / 2
    dt_min = np.diff(col["t"]) / 60
    fig, axes = plt.subplots(4, 1, figsize=(9, 10), sharex=True)
    axes[0].plot(mid, np.diff(col["missed"]) / dt_min, label="missed deadlines")
    axes[0].plot(mid, np.diff(col["overruns"]) / dt_min, label="ticks over their period")
    axes[0].set(ylabel="per minute", title="policy node at 100 Hz through DDS")
    axes[1].plot(minutes, col["loop_p99_ms"], label="whole tick", color="k")
    for key in SECTIONS:
        axes[1].plot(minutes, col[f"{key}_p99_ms"], label=key, lw=0.8)
    axes[1].set(ylabel="p99 (ms, last 20 s)")
    axes[2].plot(mid, col["host_busy_percent"][1:], label="host busy")
    axes[2].plot(mid, col["others_busy_percent"][1:], label="other processes")
    for who in ("node", "mock", "probe"):
        axes[2].plot(mid, col[f"{who}_cpu_percent"][1:], label=who, lw=0.8)
    axes[2].plot(mid, col["host_steal_percent"][1:], label="steal (other guests)")
    axes[2].set(ylabel="% of all cores")
    axes[3].plot(minutes, col["node_rss_mb"], label="node + planner")
    if col["mock_rss_mb"].any():
        axes[3].plot(minutes, col["mock_rss_mb"], label="sim mock")
    axes[3].plot(minutes, col["probe_rss_mb"], label="probe")
    axes[3].set(ylabel="resident MB", xlabel="minutes")
    for ax in axes:
        ax.legend(fontsize=8, loc="upper right")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
