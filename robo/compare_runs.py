"""``robo compare-runs``: several online runs (``robo finetune`` output folders) on one success-vs-env-steps PNG,
with a table of what each measured, so methods trained on the same budget can be read side by side.

Each run's figures come from its ``ppo/summary.json`` (written when PPO ends): the validation evaluations
(``eval_env_steps`` / ``eval_success``, seeds 90 000+) and the per-iteration training-episode success.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robo.bench.common import print_json_line, print_table


@dataclass
class CompareRunsConfig:
    runs: tuple[Path, ...] = ()  # robo finetune output folders (or their ppo/ folders)
    labels: tuple[str, ...] = ()  # one per run; empty = each run's method and folder name
    output: Path = Path("data/compare_runs.png")  # the PNG; the figures go to stdout
    smooth: int = 5  # training-episode success is drawn as a mean over this many iterations (1 = raw)


def read_run(run: Path) -> dict[str, Any]:
    """A run's ``ppo/summary.json``, with a one-line error when the folder is not a finished online run."""
    run = Path(run)
    for candidate in (run / "ppo" / "summary.json", run / "summary.json"):
        if candidate.exists():
            summary = json.loads(candidate.read_text())
            if "history" not in summary:
                raise ValueError(f"{candidate} has no history: it is not a robo finetune summary")
            return summary
    raise FileNotFoundError(f"{run} has no ppo/summary.json: pass a robo finetune output folder whose PPO finished")


def trailing_mean(values: list[float], window: int) -> list[float]:
    """Mean of each value and the ``window - 1`` before it, skipping NaN (an iteration that finished no episode);
    NaN where the whole window is NaN."""
    import numpy as np

    x = np.asarray(values, float)
    out = []
    for i in range(len(x)):
        part = x[max(0, i - window + 1):i + 1]
        out.append(float(part[np.isfinite(part)].mean()) if np.isfinite(part).any() else float("nan"))
    return out


def plot_success_curve(curves: dict[str, dict[str, list]], path: Path, title: str = "online PPO",
                       smooth: int = 1) -> None:
    """PNG of success vs env steps: validation evaluations (markers) and training-episode success (thin line, a
    trailing mean over ``smooth`` iterations: one iteration holds only a few episodes) per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.0, 3.6 + 0.25 * len(curves)))
    for i, (name, h) in enumerate(curves.items()):
        color = f"C{i}"
        if h.get("env_steps"):
            train = trailing_mean(h["train_success"], smooth) if smooth > 1 else h["train_success"]
            what = "training" if smooth <= 1 else f"training, mean of {smooth} iterations"
            ax.plot(h["env_steps"], train, color=color, lw=0.8, alpha=0.5, label=f"{name} ({what})")
        if h.get("eval_env_steps"):
            ax.plot(h["eval_env_steps"], h["eval_success"], color=color, marker="o", label=f"{name} (validation)")
    ax.set(xlabel="environment steps (thousands)", ylabel="success rate", ylim=(-0.02, 1.02), title=title)
    ax.xaxis.set_major_formatter(lambda x, _: f"{x / 1000:g}")  # 200000 in full overlaps its neighbours
    ax.grid(alpha=0.3)
    # Below the axes, off the curves; one column, so long labels are never cut at the figure's edge.
    ax.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=1, frameon=False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def compare_runs(config: CompareRunsConfig) -> dict[str, Any]:
    if not config.runs:
        raise ValueError("no runs given: pass --runs DIR [DIR ...]")
    if config.labels and len(config.labels) != len(config.runs):
        raise ValueError(f"{len(config.labels)} labels for {len(config.runs)} runs: give one label per run or none")
    summaries = [read_run(run) for run in config.runs]
    labels = list(config.labels) or [f"{s.get('method', '?')} ({Path(r).name})" for s, r in zip(summaries, config.runs)]
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels must differ, got {labels}")
    curves = {label: s["history"] for label, s in zip(labels, summaries)}
    tasks = sorted({s.get("task", "?") for s in summaries})
    plot_success_curve(curves, Path(config.output), title=f"online PPO on {', '.join(tasks)}",
                       smooth=config.smooth)
    figures: dict[str, Any] = {"output": str(config.output), "runs": {}}
    rows = []
    for label, s in zip(labels, summaries):
        h = s["history"]
        evals = h.get("eval_success", [])
        entry = {"method": s.get("method"), "env_steps": s.get("env_steps"),
                 "success_start": evals[0] if evals else None, "success_end": evals[-1] if evals else None,
                 "success_best": max(evals) if evals else None, "ppo_steps_per_s": s.get("ppo_steps_per_s")}
        figures["runs"][label] = entry
        fmt = lambda x: "-" if x is None else f"{x:.2f}"  # noqa: E731
        rows.append((label, str(entry["env_steps"]), fmt(entry["success_start"]), fmt(entry["success_end"]),
                     fmt(entry["success_best"]), f"{entry['ppo_steps_per_s'] or 0:.0f}"))
    print_table("online runs (validation success, seeds 90000+)", rows,
                headers=("run", "env steps", "start", "end", "best", "env steps/s"))
    print_json_line(figures)
    return figures
