"""Success rate of the scripted experts over seeded episodes: ``python -m sim.measure_experts --episodes 100``."""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
from tqdm import tqdm

from sim.env import TASKS, EnvConfig, SimEnv
from sim.experts import ExpertConfig, make_expert


def measure(task: str, episodes: int, seed: int, config: ExpertConfig, progress: bool = True) -> dict:
    env = SimEnv(EnvConfig(task=task))
    successes, lengths = [], []
    try:
        for ep in tqdm(range(episodes), desc=task, disable=not progress):
            obs, _ = env.reset(seed=seed + ep)
            expert = make_expert(env, ExpertConfig(**{**config.__dict__, "seed": seed + ep}))
            expert.reset(obs)
            done, success, steps = False, False, 0
            while not done:
                obs, _, terminated, truncated, info = env.step(expert.act(obs))
                success, steps, done = info["success"], steps + 1, terminated or truncated
            successes.append(success)
            lengths.append(steps)
    finally:
        env.close()
    return {"task": task, "episodes": episodes, "success_rate": float(np.mean(successes)),
            "mean_length": float(np.mean(lengths)), "failed_seeds": [seed + i for i, s in enumerate(successes) if not s]}


def main() -> None:
    os.environ.setdefault("MUJOCO_GL", "egl")
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", nargs="*", default=list(TASKS))
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--action-noise-std", type=float, default=0.0)
    parser.add_argument("--waypoint-jitter-m", type=float, default=0.0)
    parser.add_argument("--hesitation-prob", type=float, default=0.0)
    args = parser.parse_args()
    knobs = ExpertConfig(action_noise_std=args.action_noise_std, waypoint_jitter_m=args.waypoint_jitter_m,
                         hesitation_prob=args.hesitation_prob)
    for task in args.tasks:
        print(json.dumps(measure(task, args.episodes, args.seed, knobs)))


if __name__ == "__main__":
    main()
