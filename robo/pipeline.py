"""``robo pipeline``: the whole simulated path on the embedded default, one stage after another.

Today: record scripted demonstrations and validate the store. Training, offline improvement, online refinement,
distillation and deployment join as they land, each reading what the previous stage wrote under ``output_dir``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from robo.collect import CollectConfig, collect
from robo.data.integrity import check
from robo.data.schema import DatasetError

log = logging.getLogger(__name__)


@dataclass
class PipelineConfig:
    output_dir: Path = Path("data/pipeline")  # everything the run writes lands here
    task: str = "Lift"  # simulated task
    demos: int = 50  # scripted demonstrations to record
    seed: int = 0  # first episode seed
    cameras: tuple[str, ...] = ()  # empty: low-dim observations (the embedded default)
    progress: bool = True  # progress bars


def run_pipeline(config: PipelineConfig) -> dict:
    out = Path(config.output_dir)
    dataset_path = out / f"{config.task.lower()}_demos.zarr"
    if dataset_path.exists():
        raise DatasetError(f"{dataset_path} exists from an earlier run; pass a new --output-dir or delete it")
    print(f"[1/2] recording {config.demos} scripted {config.task} demonstrations -> {dataset_path}")
    _, stats = collect(CollectConfig(output=dataset_path, task=config.task, episodes=config.demos, seed=config.seed,
                                     cameras=config.cameras, progress=config.progress))
    print(f"      saved {stats.saved} episodes ({stats.steps} steps), expert success {stats.success_rate:.2f}, "
          f"{stats.steps / max(stats.seconds, 1e-9):.0f} steps/s")
    print("[2/2] validating the dataset")
    report = check(dataset_path)
    print(f"      {report.summary()}")
    summary = {"dataset": str(dataset_path), "episodes": stats.saved, "steps": stats.steps,
               "demo_success_rate": stats.success_rate, "dataset_ok": report.ok}
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))
    return summary
