"""The policy runner: observations in, actions (or a hold) out, for one or many environments in lockstep.

Simulated evaluation and the ROS node both drive this class, so what is evaluated is what is deployed. It is pure
and deterministic given its inputs: it keeps the observation history, refuses stale or malformed observations,
calls the policy when the executed part of the last action chunk is used up, and hands out one action per tick.

Chunk alignment: the policy sees observations ``t-n_obs+1 .. t`` and predicts ``horizon`` actions starting at
``t-n_obs+1``; index ``n_obs-1`` is the action for now, so the runner executes ``chunk[n_obs-1 : n_obs-1+n_exec]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np


class ChunkPolicy(Protocol):
    def predict(self, obs: dict[str, np.ndarray]) -> np.ndarray: ...  # (B, n_obs, ...) -> (B, horizon, A)


@dataclass
class RunnerConfig:
    n_obs: int = 2  # observation history the policy conditions on
    n_action_steps: int = 8  # actions executed from each predicted chunk before replanning
    max_obs_age_s: float = 0.25  # hold when the newest observation is older than this (stale sensors)


@dataclass(frozen=True)
class Hold:
    """Do not move this tick; ``reason`` is one line for the operator."""

    reason: str


@dataclass(frozen=True)
class Act:
    action: np.ndarray  # (A,) for one env


class PolicyRunner:
    """Runs a chunk-predicting policy for ``batch`` environments that step together."""

    def __init__(self, policy: ChunkPolicy, obs_spec: dict[str, tuple[tuple[int, ...], str]], config: RunnerConfig,
                 batch: int = 1):
        self.policy, self.config, self.batch = policy, config, batch
        self.obs_spec = {k: (tuple(shape), str(dtype)) for k, (shape, dtype) in obs_spec.items()}
        self.reset()

    def reset(self, env_index: int | None = None) -> None:
        """Forget history and queued actions (all envs, or one that started a new episode)."""
        envs = range(self.batch) if env_index is None else [env_index]
        if env_index is None:
            self._history: dict[str, np.ndarray] = {
                k: np.zeros((self.batch, self.config.n_obs, *shape), dtype=dtype) for k, (shape, dtype) in self.obs_spec.items()}
            self._queue: np.ndarray | None = None
            self._filled = np.zeros(self.batch, dtype=bool)
        for i in envs:
            self._filled[i] = False
        self._cursor = np.full(self.batch, self.config.n_action_steps, dtype=int)  # forces a replan

    def validate(self, obs: dict[str, np.ndarray]) -> str | None:
        """One line naming what is wrong with a batch of observations, or None."""
        for key, (shape, dtype) in self.obs_spec.items():
            if key not in obs:
                return f"observation '{key}' is missing"
            value = np.asarray(obs[key])
            if value.shape != (self.batch, *shape):
                return f"observation '{key}' has shape {value.shape[1:]}, the policy expects {shape}"
            if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value)):
                return f"observation '{key}' contains NaN or inf"
        return None

    def act_batch(self, obs: dict[str, np.ndarray], now: float | None = None,
                  stamps: np.ndarray | None = None) -> np.ndarray | Hold:
        """Actions (batch, A) for this tick, or a Hold for all envs when the inputs cannot be trusted."""
        problem = self.validate(obs)
        if problem:
            return Hold(problem)
        if now is not None and stamps is not None:
            age = now - float(np.min(stamps))
            if age > self.config.max_obs_age_s:
                return Hold(f"observation is {age * 1e3:.0f} ms old (limit {self.config.max_obs_age_s * 1e3:.0f} ms)")
        for key in self.obs_spec:
            value = np.asarray(obs[key])
            hist = self._history[key]
            hist[:, :-1] = hist[:, 1:].copy()
            hist[:, -1] = value
            # A fresh episode has no past: fill its history with the first observation (the sampler's edge padding).
            hist[~self._filled] = value[~self._filled, None]
        self._filled[:] = True
        if self._queue is None or np.any(self._cursor >= self.config.n_action_steps):
            self._replan()
        actions = self._queue[np.arange(self.batch), self._cursor]
        self._cursor += 1
        return actions

    def _replan(self) -> None:
        chunk = np.asarray(self.policy.predict({k: v.copy() for k, v in self._history.items()}))
        start = self.config.n_obs - 1
        executed = chunk[:, start:start + self.config.n_action_steps]
        if executed.shape[1] < self.config.n_action_steps:
            raise ValueError(f"policy horizon {chunk.shape[1]} is too short to execute {self.config.n_action_steps} "
                             f"actions after {self.config.n_obs} observations")
        self._queue = executed
        self._cursor[:] = 0

    def act(self, observation: dict[str, np.ndarray], now: float | None = None, stamp: float | None = None) -> Act | Hold:
        """One environment: ``Act(action)`` or ``Hold(reason)``."""
        if self.batch != 1:
            raise ValueError("act() is for a single environment; use act_batch()")
        batched = {k: np.asarray(v)[None] for k, v in observation.items()}
        result = self.act_batch(batched, now, None if stamp is None else np.array([stamp]))
        return result if isinstance(result, Hold) else Act(result[0])


def obs_spec_from_space(observation_space: Any, keys: list[str] | tuple[str, ...]) -> dict[str, tuple[tuple[int, ...], str]]:
    """The runner's spec for ``keys`` of a gymnasium Dict space."""
    return {k: (tuple(observation_space[k].shape), str(observation_space[k].dtype)) for k in keys}
