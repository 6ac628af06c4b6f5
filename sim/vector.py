"""Subprocess-vectorised SimEnv through gymnasium's AsyncVectorEnv.

Autoreset mode: SAME_STEP. When a sub-env terminates or truncates, the step that ended the episode already
returns the first observation of the next episode, and the last observation of the finished episode is in
`info["final_obs"]` (with `info["final_info"]`, masked by `info["_final_obs"]`). We prefer it over gymnasium's
default NEXT_STEP because NEXT_STEP inserts a step whose action is ignored, which silently corrupts recorded
(obs, action) pairs and RL bootstrapping unless every caller special-cases it.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv, VectorEnv

from sim.env import EnvConfig, SimEnv


def make_vector_env(
    config: EnvConfig,
    num_envs: int,
    seeds: Sequence[int] | int | None = None,
    *,
    asynchronous: bool = True,
    context: str = "forkserver",
) -> VectorEnv:
    """AsyncVectorEnv with `num_envs` SimEnv workers (SyncVectorEnv in-process if not `asynchronous`).

    seeds: one seed per worker, or a base seed (worker i gets base + i), or None (unseeded). The seed applies to
        each worker's first reset(); later autoresets continue that worker's random stream, so a whole run is
        reproducible from the seeds. Passing `seed=` to the vector env's reset() overrides it, as usual.
    context: multiprocessing start method. Not "fork": a child forked from a process that already holds an EGL
        context (one that rendered camera observations) deadlocks creating its own renderer. "forkserver" children
        come from a fresh server process; like "spawn", it needs the main module to be importable (a file).
    """
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    if seeds is None:
        per_env: list[int | None] = [None] * num_envs
    elif isinstance(seeds, int):
        per_env = [seeds + i for i in range(num_envs)]
    else:
        per_env = [int(s) for s in seeds]
        if len(per_env) != num_envs:
            raise ValueError(f"got {len(per_env)} seeds for {num_envs} envs")
    env_fns = [functools.partial(SimEnv, config, seed) for seed in per_env]
    if not asynchronous:
        return SyncVectorEnv(env_fns, autoreset_mode=AutoresetMode.SAME_STEP)
    return AsyncVectorEnv(env_fns, context=context, autoreset_mode=AutoresetMode.SAME_STEP)
