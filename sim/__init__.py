"""Simulation side of the stack: robosuite tasks behind a gymnasium API with real-robot observation keys,
subprocess vector envs, and scripted experts for demonstrations.

Importing this package is cheap: robosuite (about a second, plus log noise) is imported when the first SimEnv
is built, and the experts/vector modules are loaded on first attribute access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sim.env import CAMERA_KEY_PREFIX, DEFAULT_HORIZONS, TASKS, EnvConfig, SimEnv

if TYPE_CHECKING:
    from sim.experts import ExpertConfig, ScriptedExpert, make_expert
    from sim.vector import make_vector_env

__all__ = [
    "CAMERA_KEY_PREFIX",
    "DEFAULT_HORIZONS",
    "TASKS",
    "EnvConfig",
    "ExpertConfig",
    "ScriptedExpert",
    "SimEnv",
    "make_expert",
    "make_vector_env",
]

_LAZY = {
    "ExpertConfig": "sim.experts",
    "ScriptedExpert": "sim.experts",
    "make_expert": "sim.experts",
    "make_vector_env": "sim.vector",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sim' has no attribute {name!r}")
