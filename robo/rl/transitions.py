"""Transitions from a dataset: per action chunk for the critic and FQE, per step for the dynamics model.

Reward: sparse success, 1 at the first step an episode reports success (the sim ends the episode there:
``terminal``); optional shaping (a time penalty, an action-smoothness penalty) is off by default. A chunk starting at
step t executes ``n_c`` actions a[t : t+n_c] (the sampler's alignment: the action executed now sits at index
n_obs-1 of the policy's predicted chunk), so its reward is sum_i gamma^i r_{t+i}, its discount gamma^n (n = the
steps actually inside the episode) and its next state the observation at t+n.

Terminal and truncated stay apart: a chunk that reaches ``terminal`` does not bootstrap; one that reaches the
episode's end without it (time limit, operator stop, or a dataset that ends without flags) bootstraps from the
last stored observation, because the observation after the final action is not recorded (one step early).

The critic's state is the dataset's low-dim observation keys concatenated (default: those the policies use); it
need not equal the policy's observation. A dataset whose episodes all succeed gives a degenerate critic (every
value the same): it is refused with a line saying how to get failures.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from robo.data.schema import DatasetError
from robo.data.store import ZarrDataset

DEFAULT_STATE_KEYS = ("eef_pos", "eef_quat", "gripper_qpos", "object_state")


class DegenerateDataError(DatasetError):
    """The dataset cannot train a critic (only successes, no failures, or no reward information)."""


@dataclass
class TransitionConfig:
    gamma: float = 0.99  # per environment step; a chunk of n steps is discounted by gamma ** n
    chunk: int = 8  # executed actions per chunk n_c (use the policy's n_action_steps)
    state_keys: tuple[str, ...] = ()  # low-dim keys of the critic/dynamics state; empty = DEFAULT_STATE_KEYS present
    time_penalty: float = 0.0  # shaping: subtracted per step (0 = sparse success reward only)
    smoothness_penalty: float = 0.0  # shaping: times the squared change of the action per step
    allow_all_success: bool = False  # accept a success-only dataset anyway (the critic will be degenerate)


@dataclass
class ChunkTransitions:
    state: np.ndarray  # (N, S) float32 state at the chunk's first step
    action: np.ndarray  # (N, n_c * A) float32 executed actions, padded with the episode's last action
    reward: np.ndarray  # (N,) discounted reward inside the chunk
    discount: np.ndarray  # (N,) gamma ** n for the n steps inside the episode
    terminal: np.ndarray  # (N,) bool: the chunk reaches a terminal step (no bootstrap)
    next_state: np.ndarray  # (N, S)
    index: np.ndarray  # (N,) dataset step index of the chunk's first step
    next_index: np.ndarray  # (N,) dataset step index of next_state
    episode: np.ndarray  # (N,) episode index
    is_start: np.ndarray  # (N,) bool: first step of its episode


@dataclass
class StepTransitions:
    state: np.ndarray  # (M, S) every step
    action: np.ndarray  # (M, A)
    next_state: np.ndarray  # (M, S) (equals state where has_next is False)
    reward: np.ndarray  # (M,) per-step reward
    terminal: np.ndarray  # (M,) bool
    has_next: np.ndarray  # (M,) bool: the next observation is recorded (not the episode's last step)


@dataclass
class OfflineData:
    """What the RL stages read from one dataset, loaded once."""

    path: Path
    task: str
    state_keys: tuple[str, ...]
    chunks: ChunkTransitions
    steps: StepTransitions
    fingerprint: str  # identifies the dataset's content: a critic fitted on another dataset is refused
    success_rate: float  # fraction of successful episodes
    episode_ends: np.ndarray  # cumulative episode ends
    obs: dict[str, np.ndarray]  # the state keys' per-step arrays (policy observation windows are cut from them)
    step_start: np.ndarray  # (M,) first step index of each step's episode
    config: TransitionConfig = field(default_factory=TransitionConfig)  # the discount and chunk the values mean


def dataset_fingerprint(ends: np.ndarray, success: np.ndarray, task: str, keys: tuple[str, ...]) -> str:
    h = hashlib.sha256()
    h.update(task.encode())
    h.update(",".join(keys).encode())
    h.update(np.asarray(ends, np.int64).tobytes())
    h.update(np.asarray(success, bool).tobytes())
    return h.hexdigest()[:16]


def state_keys_for(ds: ZarrDataset, requested: tuple[str, ...]) -> tuple[str, ...]:
    if requested:
        missing = [k for k in requested if k not in ds.schema.obs]
        if missing:
            raise DatasetError(f"state keys {missing} are not in {ds.path} (it has {sorted(ds.schema.obs)})")
        images = [k for k in requested if ds.schema.obs[k].is_image]
        if images:
            raise DatasetError(f"state keys {images} are images; the critic and dynamics take low-dim keys")
        return tuple(requested)
    keys = tuple(k for k in DEFAULT_STATE_KEYS if k in ds.schema.obs)
    if not keys:
        raise DatasetError(f"{ds.path} has none of the low-dim keys {DEFAULT_STATE_KEYS}; pass --state-keys")
    return keys


def load_offline_data(path: str | Path, config: TransitionConfig) -> OfflineData:
    """Open the dataset, check it carries rewards / success flags and failures, and build both transition sets."""
    with ZarrDataset.open(path) as ds:
        if ds.n_episodes == 0:
            raise DatasetError(f"{path} has no committed episodes; record some first")
        missing = [k for k in ("success", "terminal", "truncated") if k not in ds.keys]
        if missing:
            raise DegenerateDataError(f"{path} has no per-step {missing} arrays, so no reward can be derived; "
                                      f"record it with `robo collect` or import it with success flags")
        keys = state_keys_for(ds, config.state_keys)
        data = ds.load([*keys, "action", "success", "terminal", "truncated"])
        ends = ds.episode_ends
        task = ds.schema.task
        infos = ds.episodes
    ep_flags = np.array([bool(info.success) for info in infos])
    obs = {k: data[k] for k in keys}
    return build_offline_data(obs, data["action"], data["success"], data["terminal"], ends, config, task=task,
                              path=Path(path), episode_success=ep_flags)


def build_offline_data(obs: dict[str, np.ndarray], action: np.ndarray, success: np.ndarray, terminal: np.ndarray,
                       ends: np.ndarray, config: TransitionConfig, task: str = "", path: Path = Path("<memory>"),
                       episode_success: np.ndarray | None = None) -> OfflineData:
    """The same from arrays in memory (all episodes concatenated along time, ``ends`` cumulative)."""
    keys = tuple(obs)
    success = np.asarray(success).astype(bool)
    ends = np.asarray(ends, np.int64)
    starts = np.concatenate([[0], ends[:-1]])
    flags = np.zeros(len(ends), bool) if episode_success is None else np.asarray(episode_success, bool)
    ep_success = np.array([bool(success[s:e].any()) or bool(f) for s, e, f in zip(starts, ends, flags)])
    if ep_success.all() and not config.allow_all_success:
        raise DegenerateDataError(
            f"{path}: all {len(ends)} episodes succeed, so every value is the same and the critic learns nothing; "
            f"add failures (robo collect --action-noise-std 0.5 --waypoint-jitter-m 0.04, or policy rollouts)")
    if not ep_success.any():
        raise DegenerateDataError(f"{path}: no episode succeeds (no success flag anywhere), so the sparse reward is "
                                  f"always 0; check the success flags or add successful demonstrations")
    state = np.concatenate([obs[k].reshape(len(obs[k]), -1).astype(np.float32) for k in keys], axis=1)
    action = np.asarray(action, np.float32)
    reward, term = step_rewards(success, np.asarray(terminal).astype(bool), action, starts, ends, config)
    steps = _step_transitions(state, action, reward, term, ends)
    chunks = _chunk_transitions(state, action, reward, term, starts, ends, config)
    step_start = np.repeat(starts, ends - starts)
    return OfflineData(Path(path), task, keys, chunks, steps, dataset_fingerprint(ends, success, task, keys),
                       float(ep_success.mean()), ends, {k: np.asarray(v) for k, v in obs.items()}, step_start, config)


def obs_windows(data: OfflineData, index: np.ndarray, n_obs: int, keys: tuple[str, ...] | list[str]) -> dict:
    """Raw policy observations (B, n_obs, ...) ending at dataset steps ``index``, padded at the episode start by
    repeating its first frame (the sampler's convention)."""
    missing = [k for k in keys if k not in data.obs]
    if missing:
        raise ValueError(f"the policy observes {missing}, which the RL state ({list(data.obs)}) does not hold; "
                         f"pass --state-keys including every low-dim key the policy uses (image policies: not yet)")
    index = np.asarray(index)
    idx = np.maximum(index[:, None] + np.arange(-n_obs + 1, 1)[None], data.step_start[index][:, None])
    return {k: data.obs[k][idx] for k in keys}


def step_rewards(success: np.ndarray, terminal: np.ndarray, action: np.ndarray, starts: np.ndarray,
                 ends: np.ndarray, config: TransitionConfig) -> tuple[np.ndarray, np.ndarray]:
    """Per-step reward (1 at each episode's first success step, minus shaping) and terminal flags (a success
    step is terminal even if an imported dataset did not flag it; nothing after it is used for bootstrapping)."""
    reward = np.zeros(len(success), np.float32)
    term = terminal.copy()
    for s, e in zip(starts, ends):
        hits = np.flatnonzero(success[s:e])
        if len(hits):
            reward[s + hits[0]] = 1.0
            term[s + hits[0]] = True
        if config.time_penalty:
            reward[s:e] -= config.time_penalty
        if config.smoothness_penalty and e - s > 1:
            change = np.sum(np.diff(action[s:e], axis=0) ** 2, axis=1)
            reward[s + 1:e] -= config.smoothness_penalty * change
    return reward, term


def _step_transitions(state: np.ndarray, action: np.ndarray, reward: np.ndarray, terminal: np.ndarray,
                      ends: np.ndarray) -> StepTransitions:
    has_next = np.ones(len(state), bool)
    has_next[ends - 1] = False
    has_next &= ~terminal
    nxt = np.where(has_next[:, None], np.roll(state, -1, axis=0), state)
    return StepTransitions(state, action, nxt, reward, terminal, has_next)


def _chunk_transitions(state: np.ndarray, action: np.ndarray, reward: np.ndarray, terminal: np.ndarray,
                       starts: np.ndarray, ends: np.ndarray, config: TransitionConfig) -> ChunkTransitions:
    n, gamma = int(config.chunk), float(config.gamma)
    if n < 1:
        raise ValueError(f"chunk must be >= 1, got {n}")
    cols: dict[str, list[Any]] = {k: [] for k in ("idx", "nidx", "rew", "disc", "term", "act", "ep", "start")}
    powers = gamma ** np.arange(n)
    for ep, (s, e) in enumerate(zip(starts, ends)):
        # a terminal step ends the usable part of the episode (later steps, if any, are not bootstrapped into)
        hits = np.flatnonzero(terminal[s:e])
        e = s + hits[0] + 1 if len(hits) else e
        for t in range(s, e):
            stop = min(t + n, e)
            m = stop - t
            term = bool(terminal[t:stop].any())
            cols["idx"].append(t)
            cols["nidx"].append(stop if stop < e else e - 1)
            cols["rew"].append(float(np.dot(powers[:m], reward[t:stop])))
            cols["disc"].append(gamma ** m)
            cols["term"].append(term)
            chunk = action[np.minimum(np.arange(t, t + n), e - 1)]
            cols["act"].append(chunk.reshape(-1))
            cols["ep"].append(ep)
            cols["start"].append(t == s)
    idx, nidx = np.asarray(cols["idx"]), np.asarray(cols["nidx"])
    return ChunkTransitions(state[idx], np.stack(cols["act"]).astype(np.float32),
                            np.asarray(cols["rew"], np.float32), np.asarray(cols["disc"], np.float32),
                            np.asarray(cols["term"], bool), state[nidx], idx, nidx, np.asarray(cols["ep"]),
                            np.asarray(cols["start"], bool))


def state_from_obs(obs: dict, keys: tuple[str, ...]) -> np.ndarray:
    """The critic state from a raw observation batch: the last step of each key's history, concatenated."""
    parts = []
    for k in keys:
        v = np.asarray(obs[k])
        v = v[:, -1] if v.ndim >= 3 else v
        parts.append(v.reshape(len(v), -1).astype(np.float32))
    return np.concatenate(parts, axis=1)
