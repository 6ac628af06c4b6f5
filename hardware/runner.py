"""The policy runner: observations in, safe commands (or a hold) out, for one or many environments in lockstep.

Simulated evaluation and the ROS node both drive this class, so what is evaluated is what is deployed: the same
observation history, the same chunk execution and the same :class:`hardware.safety.SafetyFilter`. It is pure and
deterministic given its inputs: it keeps the observation history, refuses stale (per stream) or malformed
observations, calls the policy when the executed part of the last action chunk is used up, picks the action for
this tick and passes it through the safety filter.

Chunk alignment: the policy sees observations ``t-n_obs+1 .. t`` and predicts ``horizon`` actions starting at
``t-n_obs+1``; index ``n_obs-1`` is the action for now, so the runner executes ``chunk[n_obs-1 : n_obs-1+n_exec]``.

Scheduling: without a clock (simulation steps in lockstep) one action is handed out per call. With a clock
(``now`` given and ``control_dt > 0``) the action for a tick is chosen by time: executed action ``k`` belongs to
``t_obs + k * control_dt`` where ``t_obs`` is the newest observation the chunk was planned from, so after a slow
policy call or a late tick the actions whose time has passed are dropped instead of replayed late.

Planning ahead (``plan_ahead``): the tick that hands out a chunk's last action also starts planning the next chunk
from the history as it stands, and the next tick starts that chunk at its action 1 (the one for that tick). With a
clock the policy runs on a planner (a worker thread, or for the ROS node a process of its own: hardware/planner.py)
and, with ``defer_plan_start``, only once the caller has finished its tick, so no control tick waits for the
network: if a plan is still running when its chunk is due (the policy is slower than a period), the tick holds,
and once it arrives the actions whose time has passed are dropped as above. Without a clock (simulated evaluation) the same schedule is emulated exactly,
so ``robo eval`` (plan ahead by default) scores what the node executes: each chunk is conditioned on an observation
one tick older than when planning in the tick.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from hardware.kinematics import DHChain
from hardware.planner import ThreadPlanner, timed_predict
from hardware.safety import Hold, MeasuredState, SafeCommand, SafetyFilter, SafetyLimits

__all__ = ["Act", "ChunkPolicy", "Hold", "PolicyRunner", "RunnerConfig", "obs_spec_from_space"]


class ChunkPolicy(Protocol):
    def predict(self, obs: dict[str, np.ndarray]) -> np.ndarray: ...  # (B, n_obs, ...) -> (B, horizon, A)


@dataclass
class RunnerConfig:
    n_obs: int = 2  # observation history the policy conditions on
    n_action_steps: int = 8  # actions executed from each predicted chunk before replanning
    max_obs_age_s: float = 0.25  # hold when any stream is older than this (stale sensors)
    stream_max_age_s: dict[str, float] = field(default_factory=dict)  # per-stream overrides, e.g. a 30 fps camera
    control_dt: float = 0.0  # control period (s) for time-based chunk scheduling; 0 = one action per call
    plan_ahead: bool = False  # plan the next chunk one tick early, off the control path (see the module docstring)
    # With a clock: a due plan waits for start_planning(), which the ROS node calls once it has published, so the
    # planning thread runs between ticks instead of competing for the interpreter with the rest of this tick.
    defer_plan_start: bool = False


@dataclass(frozen=True)
class Act:
    action: np.ndarray  # (A,) for one env, after the safety filter when one is configured
    command: SafeCommand | None = None  # the filter's full command (absolute targets, interventions)


class PolicyRunner:
    """Runs a chunk-predicting policy for ``batch`` environments that step together."""

    def __init__(self, policy: ChunkPolicy, obs_spec: dict[str, tuple[tuple[int, ...], str]], config: RunnerConfig,
                 batch: int = 1, safety: SafetyLimits | None = None, kinematics: DHChain | None = None,
                 clock: Callable[[], float] | None = None, planner: Any = None):
        """``planner``: where plans ahead run with a clock (hardware/planner.py); None = a thread of this process.
        The runner owns it from here on and closes it in :meth:`close`."""
        self.policy, self.config, self.batch = policy, config, batch
        if config.plan_ahead and config.n_action_steps < 2:
            raise ValueError(f"plan_ahead needs at least 2 executed actions per chunk, not {config.n_action_steps}; "
                             f"set plan_ahead: false")
        self.obs_spec = {k: (tuple(shape), str(dtype)) for k, (shape, dtype) in obs_spec.items()}
        # One filter per environment: the gripper latch and arm state are per arm.
        self.filters = [SafetyFilter(safety, kinematics) for _ in range(batch)] if safety is not None else None
        self.last_commands: list[SafeCommand] = []
        self.dropped_actions = 0  # actions skipped because their time had passed (clocked scheduling)
        self.late_plans = 0  # plan_ahead: ticks that held because the next chunk was still being planned
        self.plan_s: deque[float] = deque(maxlen=500)  # wall time of recent policy calls (diagnostics)
        self.plan_failures = 0  # plans that raised (the policy, or its process): each one holds the arm
        self._planner = planner
        # Plans ahead on a planner (with a clock): every policy call goes through it, so its noise is one stream.
        self._planned = config.plan_ahead and config.control_dt > 0
        # With a clock, the filter ages the observation when the command leaves, not when the tick began: a slow
        # policy call in the tick must not let a command out on an observation that went stale meanwhile.
        self.clock = clock
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
            if self.filters is not None:
                self.filters[i] = SafetyFilter(self.filters[i].limits, self.filters[i].kinematics,
                                               armed=self.filters[i].armed)
        self._cursor = np.full(self.batch, self.config.n_action_steps, dtype=int)  # forces a replan
        self._chunk_t0: float | None = None
        # A plan in flight was made from a history that no longer holds: forget it (its thread just finishes).
        self._pending: tuple[Future, float | None] | None = None
        self._due: tuple[dict[str, np.ndarray], float] | None = None  # defer_plan_start: waiting for start_planning
        self._plan_failed = ""  # why the last plan failed; every tick holds with it until the next reset

    def validate(self, obs: dict[str, np.ndarray]) -> str | None:
        """One line naming what is wrong with a batch of observations, or None."""
        for key, (shape, dtype) in self.obs_spec.items():
            if key not in obs:
                return f"observation '{key}' is missing"
            value = np.asarray(obs[key])
            if value.shape != (self.batch, *shape):
                return f"observation '{key}' has shape {value.shape[1:]}, the policy expects {shape}"
            if value.dtype.kind == "f" and not np.isfinite(value).all():
                return f"observation '{key}' contains NaN or inf"
        return None

    def stale_stream(self, now: float, stamps: dict[str, Any] | np.ndarray) -> str | None:
        """One line naming the first stream older than its limit (or stamped in the future), or None."""
        items = stamps.items() if isinstance(stamps, dict) else [("observation", stamps)]
        for key, stamp in items:
            limit = self.config.stream_max_age_s.get(key, self.config.max_obs_age_s)
            # Plain floats: a handful of stamps per tick, where numpy's per-call overhead would dominate.
            ages = [now - t for t in np.asarray(stamp, dtype=np.float64).reshape(-1).tolist()]
            if not all(math.isfinite(a) for a in ages):
                return f"stream '{key}' has no valid timestamp"
            age = max(ages)
            if age > limit:
                name = "observation" if key == "observation" else f"stream '{key}'"
                return f"{name} is {age * 1e3:.0f} ms old (limit {limit * 1e3:.0f} ms)"
            if min(ages) < -limit:
                return f"stream '{key}' is stamped {-min(ages) * 1e3:.0f} ms in the future: clock jump?"
        return None

    def act_batch(self, obs: dict[str, np.ndarray], now: float | None = None,
                  stamps: dict[str, Any] | np.ndarray | None = None) -> np.ndarray | Hold:
        """Actions (batch, A) for this tick, or a Hold for all envs when the inputs cannot be trusted.

        ``stamps`` is one array of (batch,) observation times, or a dict stream -> (batch,) times checked against
        that stream's own age limit. ``obs`` may hold more keys than the policy uses: the safety filter reads the
        measured pose (``eef_pos``, ``eef_quat``, ``joint_pos``) from it when present.
        """
        if self._plan_failed:  # until a reset (the node re-arms): a policy that failed once is not trusted again
            return Hold(self._plan_failed)
        if self._due is not None:  # the caller did not start the deferred plan after its last tick: start it now
            self.start_planning()
        problem = self.validate(obs)
        if problem:
            return Hold(problem)
        if now is not None and stamps is not None:
            stale = self.stale_stream(now, stamps)
            if stale:
                return Hold(stale)
        for key in self.obs_spec:
            value = np.asarray(obs[key])
            hist = self._history[key]
            hist[:, :-1] = hist[:, 1:].copy()
            hist[:, -1] = value
            # A fresh episode has no past: fill its history with the first observation (the sampler's edge padding).
            hist[~self._filled] = value[~self._filled, None]
        self._filled[:] = True
        clocked = now is not None and self.config.control_dt > 0
        if clocked and self._chunk_t0 is not None:
            index = int(np.floor((now - self._chunk_t0) / self.config.control_dt + 1e-9))
            self.dropped_actions += max(0, min(index, self.config.n_action_steps) - int(self._cursor[0]))
            self._cursor[:] = max(index, int(self._cursor[0]))
        exhausted = self._queue is None or bool((self._cursor >= self.config.n_action_steps).any())
        if exhausted and self._pending is not None:
            late = self._adopt(now if clocked else None)
            if late is not None:
                return late
        elif exhausted:
            try:
                chunk, seconds = self._predict(self._history_now())
            except Exception as err:  # noqa: BLE001 - as a failed plan ahead: hold, say why, until a reset
                return self._failed(err)
            self.plan_s.append(seconds)
            self._queue = self._executed(chunk)
            self._cursor[:] = 0
            if clocked:
                self._chunk_t0 = self._newest_stamp(now, stamps)
                index = int(np.floor((now - self._chunk_t0) / self.config.control_dt + 1e-9))
                if index >= self.config.n_action_steps:
                    return Hold(f"the policy took longer than the {self.config.n_action_steps} actions it planned")
                self.dropped_actions += index
                self._cursor[:] = index
        actions = self._queue[np.arange(self.batch), self._cursor]
        self._cursor += 1
        if self.config.plan_ahead and self._pending is None and bool((self._cursor >= self.config.n_action_steps).all()):
            self._plan_next(now if clocked else None, stamps)
        if self.filters is None:
            return actions
        return self._filter(actions, obs, now, stamps)

    def _newest_stamp(self, now: float, stamps: dict[str, Any] | np.ndarray | None) -> float:
        """When the chunk's action 0 is due: the newest observation's time, but never after ``now``. A tick reads
        messages that arrived after it began (stamped after ``now``); anchoring on those would put ``now`` before
        action 0's slot and replay an action of the chunk (an index of -1 is the chunk's last)."""
        if stamps is None:
            return now
        values = list(stamps.values()) if isinstance(stamps, dict) else [stamps]
        return min(now, float(max(np.max(np.asarray(v, dtype=np.float64)) for v in values)))

    def _filter(self, actions: np.ndarray, obs: dict[str, np.ndarray], now: float | None,
                stamps: dict[str, Any] | np.ndarray | None) -> np.ndarray | Hold:
        commands = []
        oldest = None
        if stamps is not None:
            values = list(stamps.values()) if isinstance(stamps, dict) else [stamps]
            per_stream = [np.asarray(v, dtype=np.float64).reshape(-1).tolist() for v in values]
            oldest = [min(times[i] for times in per_stream) for i in range(self.batch)]
        if now is not None and self.clock is not None:
            now = self.clock()
        for i, flt in enumerate(self.filters or []):
            result = flt(actions[i], measured_state(obs, i), None if oldest is None else oldest[i], now)
            if isinstance(result, Hold):
                return result
            commands.append(result)
        self.last_commands = commands
        return np.stack([c.action for c in commands]).astype(actions.dtype)

    def _history_now(self) -> dict[str, np.ndarray]:
        """A copy of the observation history: the policy may run while the next ticks shift the original."""
        return {k: v.copy() for k, v in self._history.items()}

    def _predict(self, history: dict[str, np.ndarray]) -> tuple[np.ndarray, float]:
        """(chunk, seconds): on the planner when this runner plans ahead on one (waiting for it), else here."""
        if self._planned:
            return self._get_planner().submit(history).result()
        return timed_predict(self.policy.predict, history)

    def _get_planner(self) -> Any:
        if self._planner is None:
            self._planner = ThreadPlanner(self.policy)
        return self._planner

    def reseed(self, *entropy: int) -> None:
        """Restart the policy's sampling noise from ``entropy`` (the ROS node: at each arming, as ``robo eval``
        does per episode), in order with the plans: one in flight finishes on the old stream."""
        if self._planned:
            self._get_planner().reseed(*entropy)
        elif hasattr(self.policy, "reseed"):
            self.policy.reseed(*entropy)

    def _executed(self, chunk: np.ndarray) -> np.ndarray:
        """The executed part (batch, n_action_steps, A) of a predicted chunk."""
        start = self.config.n_obs - 1
        executed = chunk[:, start:start + self.config.n_action_steps]
        if executed.shape[1] < self.config.n_action_steps:
            raise ValueError(f"policy horizon {chunk.shape[1]} is too short to execute {self.config.n_action_steps} "
                             f"actions after {self.config.n_obs} observations")
        return executed

    def _plan_next(self, now: float | None, stamps: dict[str, Any] | np.ndarray | None) -> None:
        """Start planning the next chunk from the history as it is now (plan_ahead)."""
        history = self._history_now()
        if now is None:  # lockstep: the same schedule, computed at once
            future: Future = Future()
            future.set_result(self._predict(history))
            self._pending = (future, None)
            return
        self._due = (history, self._newest_stamp(now, stamps))
        if not self.config.defer_plan_start:
            self.start_planning()

    def start_planning(self) -> None:
        """Hand a due plan (plan_ahead with a clock) to the planning thread; nothing to do otherwise."""
        if self._due is None:
            return
        history, planned_at = self._due
        self._due = None
        self._pending = (self._get_planner().submit(history), planned_at)

    def _adopt(self, now: float | None) -> Hold | None:
        """Switch to the planned-ahead chunk at the action for this tick (its action 1 when on time)."""
        future, planned_at = self._pending
        if now is not None and not future.done():
            self.late_plans += 1
            return Hold("the next action chunk is still being planned (the policy is slower than a control period)")
        self._pending = None
        try:
            chunk, seconds = future.result()
        except Exception as err:  # noqa: BLE001 - a failed plan holds the arm, says why, and keeps holding
            return self._failed(err)
        self._queue = self._executed(chunk)
        self.plan_s.append(seconds)
        if now is None or planned_at is None:
            self._cursor[:] = 1
            return None
        self._chunk_t0 = planned_at
        # Action 0 belonged to the tick that planned this chunk: the next tick starts at 1 even when the timer
        # fired a little early, as the lockstep emulation (robo eval) does.
        index = max(1, int(np.floor((now - planned_at) / self.config.control_dt + 1e-9)))
        if index >= self.config.n_action_steps:
            return Hold(f"the policy took longer than the {self.config.n_action_steps} actions it planned")
        self.dropped_actions += max(0, index - 1)  # action 0 belongs to the tick that planned it, by design
        self._cursor[:] = index
        return None

    def _failed(self, err: BaseException) -> Hold:
        self.plan_failures += 1
        self._plan_failed = f"planning failed: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
        return Hold(self._plan_failed)

    def close(self) -> None:
        """Stop the planning worker (the node calls this at shutdown)."""
        if self._planner is not None:
            self._planner.close()
            self._planner = None

    def act(self, observation: dict[str, np.ndarray], now: float | None = None,
            stamp: float | dict[str, float] | None = None) -> Act | Hold:
        """One environment: ``Act(action, command)`` or ``Hold(reason)``."""
        if self.batch != 1:
            raise ValueError("act() is for a single environment; use act_batch()")
        batched = {k: np.asarray(v)[None] for k, v in observation.items()}
        if isinstance(stamp, dict):
            stamps: dict[str, Any] | np.ndarray | None = {k: np.array([v]) for k, v in stamp.items()}
        else:
            stamps = None if stamp is None else np.array([stamp])
        result = self.act_batch(batched, now, stamps)
        if isinstance(result, Hold):
            return result
        return Act(result[0], self.last_commands[0] if self.filters is not None else None)

    # Arm / disarm every env's filter (the ROS node's services call these).
    def arm(self) -> None:
        for flt in self.filters or []:
            flt.arm()

    def disarm(self) -> None:
        for flt in self.filters or []:
            flt.disarm()


def measured_state(obs: dict[str, np.ndarray], index: int) -> MeasuredState | None:
    """Env ``index``'s measured pose from a batch of observations, or None when the pose is not observed."""
    if "eef_pos" not in obs or "eef_quat" not in obs:
        return None
    joints = obs.get("joint_pos")
    return MeasuredState(eef_pos=np.asarray(obs["eef_pos"][index], dtype=np.float64),
                         eef_quat=np.asarray(obs["eef_quat"][index], dtype=np.float64),
                         joint_pos=None if joints is None else np.asarray(joints[index], dtype=np.float64))


def obs_spec_from_space(observation_space: Any, keys: list[str] | tuple[str, ...]) -> dict[str, tuple[tuple[int, ...], str]]:
    """The runner's spec for ``keys`` of a gymnasium Dict space."""
    return {k: (tuple(observation_space[k].shape), str(observation_space[k].dtype)) for k in keys}
