"""``robo pipeline``: the whole simulated path on the embedded default, one stage after another.

The run is a plain list of stages (``STAGES`` at the bottom). Each stage reads what earlier stages wrote under
``output_dir``, writes its own outputs there, and returns the figures it adds to ``summary.json``. When a stage
finishes, ``output_dir/stages/<name>.json`` records that (with its figures), so running the same command again
resumes: finished stages are skipped, an interrupted one starts again (recording tops up the demonstrations it
already has; training continues from its ``last/`` checkpoint). A second run with different options does not
touch the first: it starts a new run folder beside it (``data/pipeline-2``) and says so. Adding a stage means
writing one function ``(config, run) -> dict`` and one line in ``STAGES``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from robo.data.schema import DatasetError

log = logging.getLogger(__name__)

# The options that decide what a run computes: a re-run resumes only when these match the recorded ones.
_NOT_RUN_DEFINING = ("output_dir", "progress", "new_run")


@dataclass
class PipelineConfig:
    output_dir: Path = Path("data/pipeline")  # everything the run writes lands here; a re-run resumes it
    task: str = "Lift"  # simulated task
    demos: int = 50  # scripted demonstrations to record
    seed: int = 0  # first episode seed
    cameras: tuple[str, ...] = ()  # empty: low-dim observations (the embedded default)
    train_steps: int = 3000  # diffusion policy optimiser steps (lowdim_diffusion preset otherwise)
    distill_steps: int = 1000  # one-step student optimiser steps
    eval_episodes: int = 50  # simulated evaluation episodes per policy
    improve_rounds: int = 10  # gated offline PPO rounds on the teacher (robo improve; 0 skips the stage's updates)
    improve_failure_demos: int = 20  # noisy scripted episodes recorded beside the demos so the critic sees failures
    # The finetune stage (robo finetune on improve's accepted checkpoint). Like improve's, these budgets are scaled
    # by min(1, train_steps / 3000), so a smoke-sized pipeline runs a smoke-sized stage.
    finetune_env_steps: int = 20_480  # online PPO env steps (40 iterations of 2 envs x 32 chunks x 8; 0 skips the stage)
    finetune_distill_steps: int = 1000  # optimiser steps distilling the refined teacher into its one-step student
    finetune_gate_episodes: int = 100  # student-gate test episodes per policy; the gate passes only with >= 100
    new_run: bool = False  # start a new run folder (output_dir-2, -3, ...) instead of resuming output_dir
    progress: bool = True  # progress bars


@dataclass
class PipelineRun:
    """What the stages share: where the run lives and what earlier stages returned."""

    out: Path  # the run folder (output_dir, or the new folder beside it)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)  # stage name -> the figures it returned

    @property
    def dataset(self) -> Path:
        return Path(self.results["record"]["dataset"])

    def stage_file(self, name: str) -> Path:
        return self.out / "stages" / f"{name}.json"


@dataclass(frozen=True)
class Stage:
    name: str  # recorded as stages/<name>.json when the stage finishes; never rename a shipped stage
    title: str  # the progress line, formatted with the config's fields
    run: Callable[[PipelineConfig, PipelineRun], dict[str, Any]]  # does the work, returns figures for the summary


# ---------------------------------------------------------------------------------------------------- stages


def record_demos(config: PipelineConfig, run: PipelineRun) -> dict[str, Any]:
    from robo.collect import CollectConfig, collect
    from robo.data.store import ZarrDataset

    dataset_path = run.out / f"{config.task.lower()}_demos.zarr"
    have, next_seed = 0, config.seed
    if dataset_path.exists():  # an interrupted recording: keep its committed episodes and top them up
        with ZarrDataset.open(dataset_path) as ds:
            have = ds.n_episodes
            next_seed = max([config.seed - 1] + [e.seed for e in ds.episodes if e.seed is not None]) + 1
        print(f"      {dataset_path} already holds {have} episodes from the interrupted run; recording the rest")
    stats = None
    if have < config.demos:
        _, stats = collect(CollectConfig(output=dataset_path, task=config.task, episodes=config.demos - have,
                                         seed=next_seed, cameras=config.cameras, progress=config.progress))
        print(f"      saved {stats.saved} episodes ({stats.steps} steps), expert success {stats.success_rate:.2f}, "
              f"{stats.steps / max(stats.seconds, 1e-9):.0f} steps/s")
    with ZarrDataset.open(dataset_path) as ds:
        episodes = ds.episodes
        steps = ds.n_steps
    if len(episodes) < config.demos:
        raise DatasetError(f"recorded {len(episodes)} of {config.demos} demonstrations into {dataset_path}; "
                           f"see the warnings above, then run the same command again to top it up")
    successes = sum(bool(e.success) for e in episodes)
    return {"dataset": str(dataset_path), "episodes": len(episodes), "steps": int(steps),
            "demo_success_rate": successes / max(len(episodes), 1)}


def validate_dataset(config: PipelineConfig, run: PipelineRun) -> dict[str, Any]:
    from robo.data.integrity import check

    report = check(run.dataset)
    print(f"      {report.summary()}")
    if not report.clean:
        reason = report.problems[0] if report.problems else report.summary()
        raise DatasetError(f"{run.dataset} failed validation: {reason}")
    return {"dataset_ok": report.clean}


def train_teacher(config: PipelineConfig, run: PipelineRun) -> dict[str, Any]:
    from robo.train import build_config, train

    out = run.out / "diffusion"
    # resume=True: an interrupted stage continues from its last/ checkpoint (a fresh one starts from scratch).
    train(build_config("lowdim_diffusion", {"dataset": run.dataset, "output_dir": out, "seed": config.seed,
                                            "steps": config.train_steps, "eval_episodes": 0, "resume": True,
                                            "progress": config.progress}))
    return {"teacher": str(out / "best")}


def distill_student(config: PipelineConfig, run: PipelineRun) -> dict[str, Any]:
    from robo.train import build_config, train

    out = run.out / "onestep"
    train(build_config("distill", {"dataset": run.dataset, "output_dir": out, "teacher": run.out / "diffusion" / "best",
                                   "seed": config.seed, "steps": config.distill_steps, "eval_episodes": 0,
                                   "resume": True, "progress": config.progress}))
    return {"student": str(out / "best")}


def evaluate_policies(config: PipelineConfig, run: PipelineRun) -> dict[str, Any]:
    from robo.evaluate import EvalConfig, evaluate_checkpoint

    results = {}
    for name, ckpt in (("diffusion_ddim10", run.out / "diffusion" / "best"), ("onestep", run.out / "onestep" / "best")):
        r = evaluate_checkpoint(EvalConfig(checkpoint=ckpt, task=config.task, episodes=config.eval_episodes,
                                           output_dir=run.out / f"eval_{name}", progress=config.progress))
        results[name] = {"success_rate": r["success_rate"], "ci95": r["ci95"], "episodes": r["episodes"]}
        print(f"      {name}: success {r['success_rate']:.2f} (95% CI {r['ci95'][0]:.2f}-{r['ci95'][1]:.2f})")
    return {"eval": results}


def _improve_stage(config: PipelineConfig, run: PipelineRun) -> dict[str, Any]:
    from robo.rl.improve import pipeline_stage  # robo/rl: noisy failures + robo improve + evaluation

    return pipeline_stage(config, run)


def finetune_stage(config: PipelineConfig, run: PipelineRun) -> dict[str, Any]:
    """``robo finetune`` on the improve stage's accepted checkpoint (the trained teacher when improve was skipped):
    online PPO, distillation of the refined teacher into a one-step student, the student gate (teacher and student
    on the same test seeds) and, only if the gate passed, the deploy artifact. Output under ``finetune/``. A failed
    gate is a result, not an error: the figures say why no artifact was exported."""
    from robo import finetune as ft

    if config.finetune_env_steps <= 0:
        print("      skipped: finetune_env_steps is 0")
        return {"finetune": {"skipped": "finetune_env_steps=0"}}
    improve = run.results.get("improve", {}).get("improve", {})
    if improve.get("accepted"):
        start, note = Path(improve["accepted"]), None
    else:
        start = run.out / "diffusion" / "best"
        note = f"improve was skipped ({improve.get('skipped', 'no accepted checkpoint')}): refining the trained teacher"
        print(f"      {note}, {start}")
    scale = min(1.0, config.train_steps / 3000)
    num_envs = 2
    chunks = max(2, int(round(32 * scale)))
    # Never less than three iterations (8 = the lowdim preset's executed actions per chunk): the first two only fit
    # the value net, so even a smoke-sized run makes one policy update.
    env_steps = max(3 * num_envs * chunks * 8, int(round(config.finetune_env_steps * scale)))
    out = run.out / "finetune"
    cfg = ft.FinetuneConfig(
        checkpoint=start, output_dir=out, task=config.task, num_envs=num_envs, env_steps=env_steps,
        chunks_per_iter=chunks, minibatch_size=max(4, int(round(128 * scale))),
        eval_every=0,  # validation success before PPO and at its end only: each evaluation costs eval_episodes
        eval_episodes=config.eval_episodes, seed=config.seed, device="auto",
        # an interrupted stage continues its PPO run (and its distillation) instead of starting over
        resume=(out / "ppo" / "last").exists(), progress=config.progress,
        distill_steps=max(2, int(round(config.finetune_distill_steps * scale))), dataset=run.dataset,
        gate_episodes=max(2, int(round(config.finetune_gate_episodes * scale))), export=True)
    if cfg.resume:
        print(f"      {out / 'ppo' / 'last'} holds the interrupted PPO run; resuming it")
    report = ft.finetune(cfg)
    ppo, gate = report["ppo"], report.get("student_gate") or {}
    artifact = report.get("artifact") or {}

    def rate(x: Any) -> str:
        return "n/a" if x is None else f"{x:.2f}"

    figures: dict[str, Any] = {
        "checkpoint": str(start), "env_steps": ppo.get("env_steps"), "iterations": ppo.get("iterations"),
        "success_before": ppo.get("success_before"), "success_after": ppo.get("success_after"),
        "best_success": ppo.get("best_success"), "eval_episodes": ppo.get("eval_episodes"),
        "ppo_steps_per_s": ppo.get("ppo_steps_per_s"), "distill_steps": cfg.distill_steps,
        "teacher_success": gate.get("teacher_success"), "student_success": gate.get("student_success"),
        "gate_episodes": gate.get("episodes"), "gate_passed": bool(gate.get("passed")), "gate_reason": gate.get("reason"),
        "artifact": artifact.get("path"), "artifact_sha256": artifact.get("content_sha256"),
        "report": str(out / "report.json")}
    if note:
        figures["note"] = note
    if not artifact:
        figures["no_artifact"] = (f"the student gate failed: {gate.get('reason')}" if gate and not gate.get("passed")
                                  else "not exported")
        if gate and (gate.get("episodes") or 0) < ft.MIN_GATE_EPISODES:
            figures["no_artifact"] += (f"; this run's gate used {cfg.gate_episodes} episodes because the pipeline "
                                       f"scales it by train_steps / 3000 ({config.finetune_gate_episodes} at full size)")
    print(f"      PPO {figures['env_steps']} env steps: validation success {rate(figures['success_before'])} -> "
          f"{rate(figures['success_after'])} over {config.eval_episodes} episodes; student "
          f"{rate(figures['student_success'])} vs refined teacher {rate(figures['teacher_success'])} on "
          f"{figures['gate_episodes']} test episodes")
    print(f"      artifact {artifact['path']} (content {artifact['content_sha256'][:12]})" if artifact
          else f"      no artifact: {figures['no_artifact']}")
    return {"finetune": figures}


STAGES: list[Stage] = [
    Stage("record", "recording {demos} scripted {task} demonstrations", record_demos),
    Stage("validate", "validating the dataset", validate_dataset),
    Stage("train", "training a diffusion policy ({train_steps} steps)", train_teacher),
    Stage("distill", "distilling it to a one-step student ({distill_steps} steps)", distill_student),
    Stage("evaluate", "evaluating both over {eval_episodes} seeded episodes", evaluate_policies),
    Stage("improve", "gated offline improvement of the teacher ({improve_rounds} rounds)", _improve_stage),
    Stage("finetune", "online PPO refinement ({finetune_env_steps} env steps at full scale), distillation, the "
                      "student gate and export", finetune_stage),
]


# ---------------------------------------------------------------------------------------------------- the run


def _run_options(config: PipelineConfig) -> dict[str, Any]:
    values = dataclasses.asdict(config)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in values.items() if k not in _NOT_RUN_DEFINING}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Write-then-rename, so a crash never leaves a half-written record that reads as a finished stage."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def _differences(recorded: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    # An option the recorded run predates (a field added with a later stage) matches when it is left at its
    # default, so a run made before that stage existed resumes at the new stage instead of starting over.
    defaults = _run_options(PipelineConfig())
    return [f"{k}={recorded.get(k)!r} (now {wanted[k]!r})" for k in wanted
            if (recorded[k] if k in recorded else defaults.get(k)) != wanted[k]]


def _choose_run_folder(config: PipelineConfig) -> tuple[Path, str]:
    """The folder this invocation works in, and the one line that says whether it resumes or starts afresh."""
    base = Path(config.output_dir)
    wanted = _run_options(config)

    def is_fresh(folder: Path) -> bool:
        return not folder.exists() or not any(folder.iterdir())

    def next_free() -> Path:
        n = 2
        while not is_fresh(base.with_name(f"{base.name}-{n}")):
            n += 1
        return base.with_name(f"{base.name}-{n}")

    if is_fresh(base):
        return base, f"starting a new pipeline run in {base}"
    if config.new_run:
        folder = next_free()
        return folder, f"--new-run: starting a new pipeline run in {folder} ({base} is left as it is)"
    options_file = base / "pipeline.json"
    if not options_file.is_file():
        folder = next_free()
        return folder, f"{base} holds files not written by a pipeline run; starting a new run in {folder}"
    recorded = json.loads(options_file.read_text()).get("options", {})
    changed = _differences(recorded, wanted)
    if changed:
        folder = next_free()
        return folder, (f"{base} was run with other options ({', '.join(changed)}); starting a new run in {folder} "
                        f"(run with the same options to resume {base})")
    done = [s.name for s in STAGES if (base / "stages" / f"{s.name}.json").is_file()]
    if len(done) == len(STAGES):
        return base, f"every stage of {base} finished earlier; showing its summary (--new-run runs it again)"
    if not done:
        return base, f"resuming {base}: its {STAGES[0].name} stage did not finish; continuing it"
    return base, f"resuming {base}: {', '.join(done)} finished earlier; continuing from {STAGES[len(done)].name}"


def run_pipeline(config: PipelineConfig) -> dict[str, Any]:
    folder, decision = _choose_run_folder(config)
    print(decision)
    run = PipelineRun(out=folder)
    if not (folder / "pipeline.json").is_file():
        _write_json(folder / "pipeline.json", {"options": _run_options(config)})
    for i, stage in enumerate(STAGES, start=1):
        marker = run.stage_file(stage.name)
        if marker.is_file():
            run.results[stage.name] = json.loads(marker.read_text())["result"]
            continue
        print(f"[{i}/{len(STAGES)}] {stage.title.format(**dataclasses.asdict(config))}")
        started = time.time()
        result = stage.run(config, run)
        run.results[stage.name] = result
        _write_json(marker, {"stage": stage.name, "seconds": round(time.time() - started, 3),
                             "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "result": result})
    summary: dict[str, Any] = {"run_dir": str(folder)}
    for result in run.results.values():  # each stage's figures, in stage order
        summary.update(result)
    _write_json(folder / "summary.json", summary)
    print(json.dumps(summary))
    return summary
