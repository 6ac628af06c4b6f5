"""The data flywheel: roll out the accepted policy in simulation, append the episodes with provenance, retrain
behaviour cloning on the merged data, refit critic and dynamics, improve again; N rounds.

Per round, under ``<output_dir>/round<k>/``:
  rollouts.zarr   the accepted policy's episodes (source "policy", checkpoint id = the checkpoint's weights hash)
  merged.zarr     previous data + rollouts: every episode, failures included (the critic needs them)
  bc.zarr         merged, success-filtered (``merge="success"``; self-collected failures dilute BC otherwise)
  bc/             the behaviour-cloned diffusion policy retrained from scratch on bc.zarr (or merged.zarr)
  improve/        ``robo improve`` of that policy on merged.zarr: accepted/ is the round's candidate
  round.json      what happened, including the round gate's verdict

The round's candidate is retrained from scratch, so the in-run gate (which compares it only with its own start)
cannot say whether it beats the policy that entered the round. The round gate does: both are scored by the same
estimator on the merged data, with the round's critic and the same OPE seed, and the candidate replaces the
shipped policy only if it clears the gate's threshold (``gated=False`` accepts it regardless, logging what the gate
said). A rejected round still keeps its data: the next round starts from the merged dataset and the shipped policy.

Rollouts run through the same PolicyRunner as evaluation and the robot (history, chunk execution), with seeds
from ``seed`` upwards, disjoint from the demonstration (0+) and test (10 000+) seeds by default.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm import tqdm


@dataclass
class FlywheelConfig:
    rounds: int = 1  # flywheel rounds
    rollouts: int = 20  # simulated episodes of the accepted policy per round
    merge: Literal["success", "all"] = "success"  # BC retrains on success-filtered merged data, or on all of it
    bc_steps: int = 1500  # BC optimiser steps per round (lowdim_diffusion preset otherwise)
    seed: int = 50_000  # first rollout seed
    progress: bool = True  # progress bars


def checkpoint_id(path: Path) -> str:
    from policies.checkpoint import read_config

    config = read_config(path)
    return f"{Path(path).resolve()}#{str(config.get('weights_sha256', 'unknown'))[:12]}"


def record_rollouts(policy: Any, ckpt_id: str, task: str, output: Path, episodes: int, seed: int,
                    progress: bool = True, horizon: int | None = None) -> dict[str, Any]:
    """Roll ``policy`` out for ``episodes`` seeded episodes and record every step into ``output`` (created, or
    appended when the schema matches) with EpisodeInfo(source="policy", checkpoint_id=ckpt_id)."""
    from hardware.runner import Hold, PolicyRunner, RunnerConfig
    from robo.collect import open_or_create
    from robo.data.schema import DatasetSchema, EpisodeInfo
    from sim.env import EnvConfig, SimEnv

    env = SimEnv(EnvConfig(task=task, horizon=horizon))
    spec = policy.spec
    gen = torch.Generator().manual_seed(seed)

    class _Adapter:
        def predict(self, obs: dict[str, np.ndarray]) -> np.ndarray:
            with torch.no_grad():
                return policy.predict(obs, generator=gen).float().cpu().numpy()

    obs_spec = {k: (tuple(env.observation_space[k].shape), str(env.observation_space[k].dtype)) for k in spec.obs_keys}
    runner = PolicyRunner(_Adapter(), obs_spec, RunnerConfig(n_obs=spec.n_obs, n_action_steps=spec.n_action_steps))
    robot = env.robot_config()
    schema = DatasetSchema.from_spaces(env.observation_space, env.action_space, fps=float(robot["control_freq"]),
                                       task=task, robot_config=robot)
    dataset = open_or_create(Path(output), schema, None, "lz4")
    successes = []
    try:
        for ep in tqdm(range(episodes), desc="flywheel rollouts", disable=not progress, leave=False):
            obs, _ = env.reset(seed=seed + ep)
            runner.reset()
            writer = dataset.new_episode()
            success, done = False, False
            while not done:
                act = runner.act_batch({k: obs[k][None] for k in spec.obs_keys})
                if isinstance(act, Hold):
                    writer.discard()
                    raise RuntimeError(f"the runner held during a flywheel rollout: {act.reason}")
                action = np.asarray(act[0], np.float32)
                nxt, reward, terminated, truncated, info = env.step(action)
                success = bool(info.get("success", False))
                writer.add_step(obs, action, reward=float(reward), terminal=bool(terminated),
                                truncated=bool(truncated), success=success, timestamp=len(writer) / schema.fps)
                obs, done = nxt, bool(terminated or truncated)
            writer.commit(EpisodeInfo(source="policy", success=success, seed=seed + ep, checkpoint_id=ckpt_id))
            successes.append(success)
    finally:
        dataset.close()
        env.close()
    return {"episodes": episodes, "success_rate": float(np.mean(successes)) if successes else 0.0}


def gate_round(shipped: Path, candidate: Path, merged: Path, critic: Path, improve_config: Any) -> dict[str, Any]:
    """Score the shipped policy and the round's candidate with one estimator on the merged data; the verdict."""
    from policies.checkpoint import load_checkpoint
    from robo.rl.critic import IQLCritic
    from robo.rl.gate import gate_threshold
    from robo.rl.improve import critic_transitions, make_estimator

    old, new = load_checkpoint(shipped), load_checkpoint(candidate)
    chunk = new.spec.n_action_steps
    data = critic_transitions(improve_config, merged, chunk)
    estimator = make_estimator(improve_config.estimator, data, IQLCritic.load(critic, data.fingerprint),
                               improve_config, chunk)
    seed = improve_config.seed + 1  # common random numbers: the seed every in-run decision used
    j_old, j_new = estimator.estimate(old, seed), estimator.estimate(new, seed)
    threshold = gate_threshold(j_old.value, improve_config.delta)
    would = j_new.value >= threshold
    return {"j_shipped": j_old.value, "j_candidate": j_new.value, "spread_candidate": j_new.spread,
            "threshold": threshold, "would_accept": would, "accepted": would or not improve_config.gated}


def run_flywheel(start_checkpoint: Path, dataset: Path, improve_config: Any, config: FlywheelConfig,
                 output_dir: Path) -> list[dict[str, Any]]:
    """``config.rounds`` rounds from ``start_checkpoint`` (an accepted policy) and ``dataset``; returns per-round
    records (rollout success, dataset sizes, the round's OPE summary, the round gate's verdict and the checkpoint
    that ships after the round: the candidate if accepted, else the one that entered the round)."""
    from policies.checkpoint import load_checkpoint, read_config
    from robo.data.tools import merge
    from robo.rl.improve import run_improve
    from robo.train import build_config, train

    records = []
    current, data_path = Path(start_checkpoint), Path(dataset)
    task = read_config(current).get("extra", {}).get("task", "")
    for k in range(1, config.rounds + 1):
        rd = Path(output_dir) / f"round{k}"
        rd.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        policy = load_checkpoint(current)
        roll = record_rollouts(policy, checkpoint_id(current), task, rd / "rollouts.zarr", config.rollouts,
                               config.seed + 1000 * k, config.progress)
        merged = rd / "merged.zarr"
        merge([data_path, rd / "rollouts.zarr"], merged)
        bc_data = merged
        if config.merge == "success":
            bc_data = rd / "bc.zarr"
            merge([merged], bc_data, success_only=True)
        train(build_config("lowdim_diffusion", {"dataset": bc_data, "output_dir": rd / "bc", "steps": config.bc_steps,
                                                "eval_episodes": 0, "seed": improve_config.seed,
                                                "progress": config.progress}))
        cfg = dataclasses.replace(improve_config, checkpoint=rd / "bc" / "best", dataset=merged,
                                  output_dir=rd / "improve", critic=None, flywheel_rounds=0)
        summary = run_improve(cfg)
        candidate = rd / "improve" / "accepted"
        verdict = gate_round(current, candidate, merged, rd / "improve" / "critic", cfg)
        shipped = candidate if verdict["accepted"] else current
        record = {"round": k, "rollout_success": roll["success_rate"], "rollouts": roll["episodes"],
                  "bc_dataset": str(bc_data), "merged_dataset": str(merged), "ope_start": summary["ope_start"],
                  "ope_accepted": summary["ope_accepted"], "true_success": summary["true_success"],
                  "candidate_checkpoint": str(candidate), "round_gate": verdict, "shipped_checkpoint": str(shipped),
                  "seconds": time.perf_counter() - started}
        (rd / "round.json").write_text(json.dumps(record, indent=2))
        records.append(record)
        current, data_path = shipped, merged
    return records
