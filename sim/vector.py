"""Vectorised simulated envs in subprocesses (gymnasium's AsyncVectorEnv; one robosuite env per process)."""

from __future__ import annotations

from typing import Any

from sim.env import EnvConfig, SimEnv


class _Make:
    """Picklable env factory (a lambda would not survive the 'spawn' start method)."""

    def __init__(self, config: EnvConfig):
        self.config = config

    def __call__(self) -> SimEnv:
        return SimEnv(self.config)


def make_vector_env(config: EnvConfig, num_envs: int, *, asynchronous: bool = True) -> Any:
    """``num_envs`` copies of ``config`` stepping in parallel.

    Autoreset is NEXT_STEP (gymnasium's default): the step after an episode ends resets that env and ignores its
    action. Callers that run whole episodes in lockstep (evaluation) simply stop reading an env once it is done.
    ``info["success"]`` arrives as a (num_envs,) bool array.
    """
    import gymnasium as gym

    factories = [_Make(config) for _ in range(num_envs)]
    if not asynchronous or num_envs == 1:
        return gym.vector.SyncVectorEnv(factories)
    # forkserver, not fork: a child forked from a process that already holds an EGL context (one that rendered
    # camera observations, e.g. while collecting) deadlocks creating its own renderer. forkserver children come
    # from a fresh server process with no GL or torch state. (Like spawn, it needs the main module to be a file.)
    return gym.vector.AsyncVectorEnv(factories, context="forkserver")
