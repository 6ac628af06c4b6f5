"""``robo pipeline``: the whole simulated path on the embedded default, one stage after another.

Stages: record scripted demonstrations, validate the store, train a diffusion policy, distil it to a one-step
student, evaluate both in simulation. Offline improvement, online refinement and deployment join as they land,
each reading what the previous stage wrote under ``output_dir``.
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
    train_steps: int = 3000  # diffusion policy optimiser steps (lowdim_diffusion preset otherwise)
    distill_steps: int = 1000  # one-step student optimiser steps
    eval_episodes: int = 50  # simulated evaluation episodes per policy
    progress: bool = True  # progress bars


def run_pipeline(config: PipelineConfig) -> dict:
    out = Path(config.output_dir)
    dataset_path = out / f"{config.task.lower()}_demos.zarr"
    if dataset_path.exists():
        raise DatasetError(f"{dataset_path} exists from an earlier run; pass a new --output-dir or delete it")
    print(f"[1/5] recording {config.demos} scripted {config.task} demonstrations -> {dataset_path}")
    _, stats = collect(CollectConfig(output=dataset_path, task=config.task, episodes=config.demos, seed=config.seed,
                                     cameras=config.cameras, progress=config.progress))
    print(f"      saved {stats.saved} episodes ({stats.steps} steps), expert success {stats.success_rate:.2f}, "
          f"{stats.steps / max(stats.seconds, 1e-9):.0f} steps/s")
    print("[2/5] validating the dataset")
    report = check(dataset_path)
    print(f"      {report.summary()}")
    if not report.ok:
        raise DatasetError(f"{dataset_path} failed validation: {report.problems[0]}")

    from robo.evaluate import EvalConfig, evaluate_checkpoint
    from robo.train import build_config, train

    teacher_dir = out / "diffusion"
    print(f"[3/5] training a diffusion policy ({config.train_steps} steps) -> {teacher_dir}")
    train(build_config("lowdim_diffusion", {"dataset": dataset_path, "output_dir": teacher_dir, "seed": config.seed,
                                            "steps": config.train_steps, "eval_episodes": 0,
                                            "progress": config.progress}))
    student_dir = out / "onestep"
    print(f"[4/5] distilling it to a one-step student ({config.distill_steps} steps) -> {student_dir}")
    train(build_config("distill", {"dataset": dataset_path, "output_dir": student_dir, "teacher": teacher_dir / "best",
                                   "seed": config.seed, "steps": config.distill_steps, "eval_episodes": 0,
                                   "progress": config.progress}))
    print(f"[5/5] evaluating both over {config.eval_episodes} seeded episodes")
    results = {}
    for name, ckpt in (("diffusion_ddim10", teacher_dir / "best"), ("onestep", student_dir / "best")):
        r = evaluate_checkpoint(EvalConfig(checkpoint=ckpt, task=config.task, episodes=config.eval_episodes,
                                           output_dir=out / f"eval_{name}", progress=config.progress))
        results[name] = {"success_rate": r["success_rate"], "ci95": r["ci95"], "episodes": r["episodes"]}
        print(f"      {name}: success {r['success_rate']:.2f} (95% CI {r['ci95'][0]:.2f}-{r['ci95'][1]:.2f})")
    summary = {"dataset": str(dataset_path), "episodes": stats.saved, "steps": stats.steps,
               "demo_success_rate": stats.success_rate, "dataset_ok": report.ok, "eval": results}
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))
    return summary
