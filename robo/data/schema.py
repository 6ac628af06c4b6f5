"""What a dataset holds: the per-step array specs and the per-episode record.

The schema is stored as JSON in the root group's attributes under ``"robo"`` so any zarr reader can see it, and
so appending data recorded with another observation set, action size or rate is refused before anything is
written.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

SCHEMA_VERSION = 1

# Per-step bookkeeping arrays every dataset has beside the observations and the action.
STEP_KEYS: dict[str, tuple[tuple[int, ...], str]] = {
    "reward": ((), "float32"),
    "terminal": ((), "bool"),  # the task ended (success or failure state): do not bootstrap past it
    "truncated": ((), "bool"),  # time limit or operator stop: bootstrap past it
    "success": ((), "bool"),
    "timestamp": ((), "float64"),  # seconds; wall clock on the robot, sim time in simulation
}
ACTION_KEY = "action"  # Diffusion Policy's name for the action array

# deployment: a policy run on the robot (or the sim mock over DDS) imported from its session bag, with the operator's
# takeovers flagged per step (data/intervention).
PROVENANCE_SOURCES = ("teleop", "scripted", "policy", "imported", "deployment")


class DatasetError(Exception):
    """A dataset problem the user can act on; the message is one line saying what is wrong and what to do."""


@dataclass(frozen=True)
class ArraySpec:
    """Shape (without the time axis) and dtype of one per-step array."""

    shape: tuple[int, ...]
    dtype: str

    @classmethod
    def of(cls, value: Any) -> ArraySpec:
        arr = np.asarray(value)
        return cls(tuple(int(s) for s in arr.shape), str(arr.dtype))

    def to_json(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ArraySpec:
        return cls(tuple(int(s) for s in data["shape"]), str(np.dtype(data["dtype"])))

    @property
    def is_image(self) -> bool:
        return len(self.shape) == 3 and self.shape[-1] in (1, 3, 4) and self.shape[0] >= 8

    @property
    def is_float(self) -> bool:
        return np.issubdtype(np.dtype(self.dtype), np.floating)


@dataclass
class DatasetSchema:
    """Everything that must agree between episodes of one dataset."""

    obs: dict[str, ArraySpec]  # observation key -> spec, e.g. eef_pos (3,) float32, agentview_rgb (84,84,3) uint8
    action: ArraySpec  # per-step action, (7,) float32 for OSC deltas
    fps: float  # control rate the data was recorded at
    task: str  # task name, e.g. "Lift"
    robot_config: dict[str, Any] = field(default_factory=dict)  # robot, controller and its limits, cameras
    schema_version: int = SCHEMA_VERSION
    # Per-step labels beyond STEP_KEYS that are not observations, so no trainer feeds them to a policy: e.g. a
    # deployment session's `intervention` (the operator drove this step). Most datasets have none.
    step_arrays: dict[str, ArraySpec] = field(default_factory=dict)

    def __post_init__(self) -> None:
        reserved = set(STEP_KEYS) | {ACTION_KEY}
        clash = set(self.obs) & (reserved | set(self.step_arrays))
        if clash:
            raise DatasetError(f"observation keys {sorted(clash)} clash with reserved step keys; rename them")
        clash = set(self.step_arrays) & reserved
        if clash:
            raise DatasetError(f"per-step arrays {sorted(clash)} clash with reserved step keys; rename them")

    def array_specs(self) -> dict[str, ArraySpec]:
        """Every ``data/<key>`` array this schema implies."""
        specs = dict(self.obs)
        specs[ACTION_KEY] = self.action
        specs.update({k: ArraySpec(shape, dtype) for k, (shape, dtype) in STEP_KEYS.items()})
        specs.update(self.step_arrays)
        return specs

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "fps": self.fps,
            "task": self.task,
            "obs": {k: v.to_json() for k, v in self.obs.items()},
            "action": self.action.to_json(),
            "robot_config": self.robot_config,
            # Only when present: datasets without extra step arrays keep exactly their old metadata.
            **({"step_arrays": {k: v.to_json() for k, v in self.step_arrays.items()}} if self.step_arrays else {}),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DatasetSchema:
        version = int(data.get("schema_version", -1))
        if version > SCHEMA_VERSION:
            raise DatasetError(
                f"dataset schema version {version} is newer than this code understands ({SCHEMA_VERSION}); "
                "upgrade robo-stack"
            )
        return cls(
            obs={k: ArraySpec.from_json(v) for k, v in data["obs"].items()},
            action=ArraySpec.from_json(data["action"]),
            fps=float(data["fps"]),
            task=str(data["task"]),
            robot_config=dict(data.get("robot_config", {})),
            schema_version=version,
            step_arrays={k: ArraySpec.from_json(v) for k, v in data.get("step_arrays", {}).items()},
        )

    def mismatch(self, other: DatasetSchema) -> str | None:
        """One line naming the first difference that makes ``other``'s data unappendable here, or None."""
        if set(self.obs) != set(other.obs):
            missing, extra = sorted(set(self.obs) - set(other.obs)), sorted(set(other.obs) - set(self.obs))
            return f"observation keys differ (missing {missing}, unexpected {extra})"
        for key, spec in self.obs.items():
            if spec != other.obs[key]:
                return f"observation '{key}' is {other.obs[key].shape} {other.obs[key].dtype}, dataset has {spec.shape} {spec.dtype}"
        if self.action != other.action:
            return f"action is {other.action.shape} {other.action.dtype}, dataset has {self.action.shape} {self.action.dtype}"
        if abs(self.fps - other.fps) > 1e-6:
            return f"fps is {other.fps}, dataset was recorded at {self.fps}"
        if self.task != other.task:
            return f"task is '{other.task}', dataset holds '{self.task}'"
        if self.step_arrays != other.step_arrays:
            return (f"per-step arrays differ (dataset has {sorted(self.step_arrays)}, the new data "
                    f"{sorted(other.step_arrays)})")
        return None

    @classmethod
    def from_spaces(cls, observation_space: Any, action_space: Any, *, fps: float, task: str,
                    robot_config: dict[str, Any] | None = None) -> DatasetSchema:
        """Build a schema from gymnasium ``Dict``/``Box`` spaces (sim and real envs expose them)."""
        obs = {k: ArraySpec(tuple(s.shape), str(s.dtype)) for k, s in observation_space.spaces.items()}
        action = ArraySpec(tuple(action_space.shape), str(action_space.dtype))
        return cls(obs=obs, action=action, fps=fps, task=task, robot_config=dict(robot_config or {}))


@dataclass
class EpisodeInfo:
    """Per-episode record: where the data came from and how it ended."""

    source: str  # one of PROVENANCE_SOURCES
    success: bool
    length: int = 0  # filled in at commit
    seed: int | None = None  # env seed (sim) so the episode can be replayed
    checkpoint_id: str | None = None  # for policy rollouts: which checkpoint produced it
    operator: str | None = None  # for teleop: who recorded it
    recorded_at: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    extra: dict[str, Any] = field(default_factory=dict)  # free-form (expert knobs, import origin, ...)

    def __post_init__(self) -> None:
        if self.source not in PROVENANCE_SOURCES:
            raise DatasetError(f"episode source '{self.source}' is not one of {PROVENANCE_SOURCES}")
        if self.source == "policy" and not self.checkpoint_id:
            raise DatasetError("a policy rollout episode needs the checkpoint_id that produced it")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EpisodeInfo:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})
