"""Measure scripted-expert success rates over seeded episodes.

    python -m sim.measure_experts --episodes 100                      # all tasks, seeds 0..99, clean experts
    python -m sim.measure_experts --tasks NutAssemblySquare --episodes 20 --action-noise-std 0.1 --waypoint-jitter-m 0.01 \
        --hesitation-prob 0.1

Episodes are split across --workers processes (each builds its own env); results do not depend on the split
because both the env and the expert noise are seeded per episode.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time
from dataclasses import asdict

from tqdm import tqdm

from sim.env import TASKS, EnvConfig
from sim.experts.base import ExpertConfig


def _worker(args: tuple[str, ExpertConfig, list[int]], queue: mp.Queue) -> None:
    from sim.env import SimEnv
    from sim.experts import make_expert, run_episode

    task, expert_config, seeds = args
    env = SimEnv(EnvConfig(task=task))
    expert = make_expert(env, expert_config)
    try:
        for seed in seeds:
            success, steps = run_episode(env, expert, seed)
            queue.put((seed, success, steps))
    finally:
        env.close()


def measure(task: str, expert_config: ExpertConfig, seeds: list[int], workers: int) -> dict[str, float]:
    """Run one episode per seed; returns success rate, mean episode length and failing seeds."""
    context = mp.get_context("forkserver")
    queue = context.Queue()
    chunks = [seeds[i::workers] for i in range(workers)]
    procs = [context.Process(target=_worker, args=((task, expert_config, c), queue)) for c in chunks if c]
    start = time.time()
    for proc in procs:
        proc.start()
    results = []
    with tqdm(total=len(seeds), desc=task, unit="ep") as bar:
        while len(results) < len(seeds):
            results.append(queue.get())
            bar.update(1)
            bar.set_postfix(success=f"{sum(r[1] for r in results) / len(results):.2f}")
    for proc in procs:
        proc.join()
    successes = sum(r[1] for r in results)
    return {
        "success_rate": successes / len(seeds),
        "mean_steps": sum(r[2] for r in results) / len(seeds),
        "failed_seeds": sorted(r[0] for r in results if not r[1]),
        "seconds": time.time() - start,
    }


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("MUJOCO_GL", "egl")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--start-seed", type=int, default=0)
    parser.add_argument("--action-noise-std", "--noise", dest="noise", type=float, default=0.0)
    parser.add_argument("--waypoint-jitter-m", "--jitter", dest="jitter", type=float, default=0.0)
    parser.add_argument("--hesitation-prob", "--hesitation", dest="hesitation", type=float, default=0.0)
    parser.add_argument("--expert-seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    config = ExpertConfig(
        action_noise_std=args.noise, waypoint_jitter_m=args.jitter, hesitation_prob=args.hesitation,
        seed=args.expert_seed,
    )
    seeds = list(range(args.start_seed, args.start_seed + args.episodes))
    print(f"expert config: {asdict(config)}; seeds {seeds[0]}..{seeds[-1]}")
    summary = {task: measure(task, config, seeds, args.workers) for task in args.tasks}
    for task, result in summary.items():
        print(
            f"{task:<18} success {result['success_rate']:.1%} ({round(result['success_rate'] * len(seeds))}/"
            f"{len(seeds)})  mean steps {result['mean_steps']:.0f}  {result['seconds']:.0f} s  "
            f"failed seeds {result['failed_seeds']}"
        )


if __name__ == "__main__":
    main()
