"""``robo collect``: record demonstrations from a scripted expert, a teleop device or the real arm into Zarr.

One loop serves every source. An *action source* proposes the next action and the operator's events (start,
save, discard, redo, quit); the loop keeps the control rate, streams each step into the store and commits or
drops whole episodes, so a crash loses at most the episode being recorded.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Protocol

import numpy as np
from tqdm import tqdm

from robo.data.schema import DatasetError, DatasetSchema, EpisodeInfo
from robo.data.store import ZarrDataset

log = logging.getLogger(__name__)

SourceName = Literal["scripted", "keyboard", "spacemouse"]


@dataclass
class CollectConfig:
    """What to record and where."""

    output: Path = Path("data/demos/lift_lowdim.zarr")  # dataset to create, or to append to if it exists
    task: str = "Lift"  # Lift | PickPlaceCan | NutAssemblySquare
    source: SourceName = "scripted"  # who chooses the actions (scripted needs the sim)
    robot: Literal["sim", "real"] = "sim"  # sim: robosuite; real: the arm and cameras of --robot-config over ROS 2
    robot_config: Path | None = None  # real robot YAML (default hardware/robots/panda_real.yaml)
    ready_timeout_s: float = 10.0  # real robot: how long to wait for the arm's first fresh state before giving up
    episodes: int = 20  # episodes to save (discarded ones do not count)
    seed: int = 0  # seed of the first episode; episode i uses seed + i
    cameras: tuple[str, ...] = ()  # e.g. ("agentview", "robot0_eye_in_hand"); empty = low-dim only
    image_size: int = 84  # square camera images
    depth: bool = False  # record aligned depth (uint16 mm) beside each RGB stream
    keep_successes_only: bool = False  # drop failed episodes instead of saving them
    max_attempts: int | None = None  # give up after this many episodes (default 3x episodes)
    realtime: bool | None = None  # pace to the control rate; default: on for teleop/real, off for scripted
    zarr_format: int | None = None  # 2: zarr-2 readers (Diffusion Policy, RL-100) open it; default 3, or the store's own when appending
    compression: Literal["lz4", "zstd", "none"] = "lz4"  # lz4 keeps recording cheap; merge to zstd to archive
    action_noise_std: float = 0.0  # scripted expert: Gaussian noise on its actions
    waypoint_jitter_m: float = 0.0  # scripted expert: random offsets of its waypoints
    hesitation_prob: float = 0.0  # scripted expert: chance per phase of pausing
    operator: str | None = None  # teleop: who is recording (stored per episode)
    progress: bool = True  # show a progress bar

    @property
    def is_realtime(self) -> bool:
        return self.realtime if self.realtime is not None else (self.source != "scripted" or self.robot == "real")


@dataclass
class SourceStep:
    """What an action source says at one control tick."""

    action: np.ndarray | None  # None while the operator has not started the episode
    events: frozenset[str] = frozenset()  # subset of {"start", "save", "discard", "redo", "quit"}


class ActionSource(Protocol):
    provenance: str  # EpisodeInfo.source for what this source records

    def reset(self, obs: dict[str, np.ndarray], episode_seed: int) -> None: ...
    def step(self, obs: dict[str, np.ndarray]) -> SourceStep: ...
    def close(self) -> None: ...


class ScriptedSource:
    """The scripted expert: starts immediately, never sends events (the env's success or horizon ends it)."""

    provenance = "scripted"

    def __init__(self, expert: Any):
        self.expert = expert

    def reset(self, obs: dict[str, np.ndarray], episode_seed: int) -> None:
        # The expert's noise is drawn from (its seed, the episode seed): episode k is the same whether or not the
        # episodes before it were recorded, so a shorter collection is a prefix of a longer one.
        self.expert.reset(obs, episode_seed=episode_seed)

    def step(self, obs: dict[str, np.ndarray]) -> SourceStep:
        return SourceStep(np.asarray(self.expert.act(obs), dtype=np.float32))

    def close(self) -> None:
        pass


class TeleopSource:
    """A teleop device (keyboard, SpaceMouse): the operator presses start, then drives and saves or discards."""

    provenance = "teleop"

    def __init__(self, device: Any, autostart: bool = False):
        self.device = device
        self.autostart = autostart  # begin recording without waiting for "start" (scripted operators in tests)
        self._recording = False
        device.start()

    def reset(self, obs: dict[str, np.ndarray], episode_seed: int) -> None:
        self._recording = self.autostart

    def step(self, obs: dict[str, np.ndarray]) -> SourceStep:
        command = self.device.read()
        if "start" in command.events:
            self._recording = True
        action = np.asarray(command.action, dtype=np.float32) if self._recording else None
        return SourceStep(action, frozenset(command.events))

    def close(self) -> None:
        self.device.stop()


class RateKeeper:
    """Sleeps to hold a fixed period and counts overruns (a step that took longer than one period)."""

    def __init__(self, hz: float, enabled: bool = True):
        self.period = 1.0 / hz
        self.enabled = enabled
        self.overruns = 0
        self._next = time.perf_counter() + self.period

    def wait(self) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if now > self._next:
            self.overruns += 1
            if self.overruns in (1, 10, 100) or self.overruns % 1000 == 0:
                log.warning("control loop overran its %.1f ms period by %.1f ms (%d overruns so far)",
                            self.period * 1e3, (now - self._next) * 1e3, self.overruns)
            self._next = now + self.period
            return
        time.sleep(self._next - now)
        self._next += self.period


@dataclass
class CollectStats:
    saved: int = 0
    saved_successes: int = 0
    discarded: int = 0
    attempts: int = 0
    steps: int = 0
    overruns: int = 0
    seconds: float = 0.0
    episode_indices: list[int] = field(default_factory=list)

    @property
    def success_rate(self) -> float:
        return self.saved_successes / self.saved if self.saved else 0.0


def open_or_create(path: Path, schema: DatasetSchema, zarr_format: int | None, compression: str) -> ZarrDataset:
    """Append to an existing dataset only when its schema (and the zarr format, if one is asked for) matches;
    otherwise create it (zarr-3 unless ``zarr_format`` says 2)."""
    if path.exists() and any(path.iterdir()):
        # Checked read-only first: a refused append must not even drop a torn tail.
        with ZarrDataset.open(path) as existing:
            problem, have = existing.schema.mismatch(schema), existing.zarr_format
        if problem:
            raise DatasetError(f"cannot append to {path}: {problem}; record into a new --output")
        if zarr_format is not None and zarr_format != have:
            # A store has one format: appending "as zarr-3" to a zarr-2 store would silently stay zarr-2.
            raise DatasetError(f"cannot append to {path}: it is a zarr-{have} store and --zarr-format {zarr_format} "
                               f"was asked for; drop --zarr-format to append in zarr-{have}, or convert it first "
                               f"with `robo data merge {path} -o NEW --zarr-format {zarr_format}`")
        return ZarrDataset.open(path, mode="a")
    path.parent.mkdir(parents=True, exist_ok=True)
    return ZarrDataset.create(path, schema, zarr_format=zarr_format or 3, compression=compression)


def record(env: Any, source: ActionSource, dataset: ZarrDataset, config: CollectConfig,
           clock: Callable[[], float] = time.time) -> CollectStats:
    """The collection loop. ``env`` is a SimEnv or RealArmEnv; stops after ``config.episodes`` saved episodes."""
    stats = CollectStats()
    max_attempts = config.max_attempts or 3 * config.episodes
    seed = config.seed
    fps = float(dataset.schema.fps) or 1.0
    bar = tqdm(total=config.episodes, desc=f"collect {config.task}", unit="ep", disable=not config.progress)
    started = time.perf_counter()
    quit_requested = False
    try:
        while stats.saved < config.episodes and stats.attempts < max_attempts and not quit_requested:
            stats.attempts += 1
            obs, _ = env.reset(seed=seed)
            source.reset(obs, seed)
            writer = dataset.new_episode()
            rate = RateKeeper(fps, enabled=config.is_realtime and dataset.schema.fps > 0)
            outcome, success = "running", False
            while outcome == "running":
                proposal = source.step(obs)
                events = proposal.events
                if "quit" in events:
                    # Quitting mid-episode drops it: only an explicit save (or the env ending it) labels an episode.
                    outcome, quit_requested = "discard", True
                elif "redo" in events:
                    outcome = "redo"
                elif "discard" in events:
                    outcome = "discard"
                elif "save" in events and len(writer):
                    outcome = "save"
                elif proposal.action is not None:
                    # Unpaced sim runs faster than real time: stamp it with control time instead of the clock.
                    stamp = clock() if config.is_realtime else len(writer) / fps
                    next_obs, reward, terminated, truncated, info = env.step(proposal.action)
                    success = bool(info.get("success", False))
                    writer.add_step(obs, proposal.action, reward=float(reward), terminal=bool(terminated),
                                    truncated=bool(truncated), success=success, timestamp=stamp)
                    obs = next_obs
                    if terminated or truncated:
                        outcome = "save"
                rate.wait()
            stats.overruns += rate.overruns
            keep = outcome == "save" and len(writer) > 0 and (success or not config.keep_successes_only)
            if keep:
                info = EpisodeInfo(source=source.provenance, success=success, seed=seed, operator=config.operator,
                                   extra=_extra(config))
                stats.episode_indices.append(writer.commit(info))
                stats.saved += 1
                stats.saved_successes += int(success)
                stats.steps += info.length
            else:
                writer.discard()
                stats.discarded += 1
            if outcome != "redo":
                seed += 1
            bar.update(int(keep))
            elapsed = time.perf_counter() - started
            bar.set_postfix(success=f"{stats.success_rate:.2f}", discarded=stats.discarded,
                            steps_per_s=f"{stats.steps / max(elapsed, 1e-9):.0f}")
    finally:
        bar.close()
        stats.seconds = time.perf_counter() - started
    if stats.saved < config.episodes and not quit_requested:
        log.warning("saved %d of %d episodes after %d attempts", stats.saved, config.episodes, stats.attempts)
    return stats


def _extra(config: CollectConfig) -> dict[str, Any]:
    if config.source != "scripted":
        return {}
    return {"action_noise_std": config.action_noise_std, "waypoint_jitter_m": config.waypoint_jitter_m,
            "hesitation_prob": config.hesitation_prob}


def _make_env(config: CollectConfig) -> Any:
    if config.robot == "real":
        from hardware.robot_config import DEFAULT_ROBOT, load_robot_config, make_real_env

        if config.source == "scripted":
            raise DatasetError("the scripted expert needs the simulator's privileged state; on the real arm use "
                               "--source keyboard or --source spacemouse")
        return make_real_env(load_robot_config(config.robot_config or DEFAULT_ROBOT), config.ready_timeout_s)
    from sim.env import EnvConfig, SimEnv

    return SimEnv(EnvConfig(task=config.task, cameras=tuple(config.cameras), image_height=config.image_size,
                            image_width=config.image_size, depth=config.depth))  # record() seeds every reset


def make_source(config: CollectConfig, env: Any) -> ActionSource:
    """The action source a config names, for an env built by ``_make_env``."""
    if config.source == "scripted":
        from sim.experts import ExpertConfig, make_expert

        # The expert's own seed stays at its default: each episode's noise comes from its episode seed (see
        # ScriptedSource.reset), not from where the collection started.
        return ScriptedSource(make_expert(env, ExpertConfig(action_noise_std=config.action_noise_std,
                                                            waypoint_jitter_m=config.waypoint_jitter_m,
                                                            hesitation_prob=config.hesitation_prob)))
    if config.source == "keyboard":
        from hardware.teleop import KeyboardTeleop

        return TeleopSource(KeyboardTeleop())
    if config.source == "spacemouse":
        from hardware.teleop import SpaceMouseTeleop

        return TeleopSource(SpaceMouseTeleop())
    raise DatasetError(f"unknown source '{config.source}'; choose scripted, keyboard or spacemouse")


def collect(config: CollectConfig) -> tuple[Path, CollectStats]:
    """Record ``config.episodes`` episodes into ``config.output``."""
    env = _make_env(config)
    try:
        source = make_source(config, env)
    except BaseException:
        env.close()
        raise
    try:
        robot = env.robot_config()
        schema = DatasetSchema.from_spaces(env.observation_space, env.action_space, fps=float(robot["control_freq"]),
                                           task=config.task, robot_config=robot)
        with open_or_create(Path(config.output), schema, config.zarr_format, config.compression) as dataset:
            stats = record(env, source, dataset, config)
    finally:
        source.close()
        env.close()
    return Path(config.output), stats
