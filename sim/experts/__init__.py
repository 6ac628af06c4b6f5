"""Scripted experts, one per task, behind a common interface:

    expert = make_expert(env, ExpertConfig(...)); expert.reset(obs); action = expert.act(obs)

They read privileged simulator state (object poses, nut handle, peg) from the SimEnv, so they are for
generating demonstrations in simulation only.
"""

from __future__ import annotations

from sim.env import SimEnv
from sim.experts.base import ExpertConfig, ScriptedExpert

__all__ = ["ExpertConfig", "ScriptedExpert", "make_expert", "run_episode"]


def make_expert(env: SimEnv, config: ExpertConfig | None = None) -> ScriptedExpert:
    """Expert for env.config.task."""
    config = config if config is not None else ExpertConfig()
    task = env.config.task
    if task == "Lift":
        from sim.experts.lift import LiftExpert

        return LiftExpert(env, config)
    if task == "PickPlaceCan":
        from sim.experts.pick_place_can import PickPlaceCanExpert

        return PickPlaceCanExpert(env, config)
    if task == "NutAssemblySquare":
        from sim.experts.nut_square import NutSquareExpert

        return NutSquareExpert(env, config)
    raise ValueError(f"no scripted expert for task {task!r}")


def run_episode(env: SimEnv, expert: ScriptedExpert, seed: int | None) -> tuple[bool, int]:
    """Roll out one episode; returns (success, steps)."""
    obs, _ = env.reset(seed=seed)
    expert.reset(obs, episode_seed=seed)
    steps = 0
    while True:
        obs, _, terminated, truncated, info = env.step(expert.act(obs))
        steps += 1
        if terminated or truncated:
            return bool(info["success"]), steps
