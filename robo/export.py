"""``robo export``: turn a checkpoint (normally the gated one-step student) into the deploy artifact.

The artifact (``policies/artifact.py``) holds the shipped weights, normaliser, observation and action spec, control
rate, n_obs / n_action_steps, the robot's safety limits and the provenance of every stage that produced it:
the dataset, each checkpoint on the teacher chain (student <- refined teacher <- BC policy) with the success it was
measured at, and the student gate's verdict. A student that failed its gate is refused here, so a policy that did
not pass cannot reach the robot by accident.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)

# Used only when hardware.safety (the robot side's SafetyLimits) cannot be imported: robosuite's OSC_POSE scaling
# (what the policy was trained against: 5 cm and 0.5 rad per step at action 1) and a workspace box.
DEFAULT_SAFETY_LIMITS: dict[str, Any] = {
    "max_delta_pos_m": 0.05,  # per control step
    "max_delta_rot_rad": 0.5,  # per control step
    "workspace_min_m": [-0.4, -0.5, 0.8],  # eef position box (world frame of the sim table)
    "workspace_max_m": [0.4, 0.5, 1.4],
    "max_obs_age_s": 0.25,  # hold when the newest observation is older
    "watchdog_missed_periods": 3,  # hold after this many control periods without a fresh command
}


class ExportError(ValueError):
    """The checkpoint cannot be exported as it stands; the message says why and what to do."""


@dataclass
class ExportConfig:
    checkpoint: Path = Path("data/runs/lift_onestep/best")  # checkpoint directory to ship (the gated student), or a noise-PPO run's ppo/best (ships the steered student)
    output: Path = Path("data/artifacts/lift")  # artifact directory to write (replaced atomically)
    safety_limits: Path | None = None  # SafetyLimits fields (hardware/safety.py) over its defaults: a plain map, a `safety:` section or a robot's ROS parameter file
    control_rate_hz: float = 0.0  # policy rate on the robot; 0 = the dataset's recording rate (fps)
    gate_report: Path | None = None  # JSON from robo finetune with the student gate's verdict; a failed gate refuses
    stage_results: Path | None = None  # optional JSON list of extra provenance stages ({name, checkpoint, success_rate})
    inference_steps: int = 1  # network calls per chunk on the robot (1 for a one-step student)


def _read_structured(path: Path) -> Any:
    if not path.is_file():
        raise ExportError(f"{path} does not exist")
    try:
        return yaml.safe_load(path.read_text())  # YAML is a superset of JSON
    except yaml.YAMLError as err:
        raise ExportError(f"{path} is not valid YAML/JSON ({str(err).splitlines()[0]})") from None


def resolve_safety_limits(path: Path | None, control_rate_hz: float = 0.0) -> dict[str, Any]:
    """The limits dict. With hardware.safety's limits dataclass (the robot side's own definition): its defaults
    updated by ``path``, validated by constructing it, and ``control_dt`` set from the control rate. Without it:
    ``path`` as given, or the built-in defaults."""
    given: dict[str, Any] = {}
    if path is not None:
        given = _limits_section(_read_structured(Path(path)), Path(path))
    cls = _safety_dataclass()
    if cls is None:
        return given or dict(DEFAULT_SAFETY_LIMITS)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(given) - names)
    if unknown:
        raise ExportError(f"{path}: unknown safety limits {unknown}; {cls.__name__} has {sorted(names)}")
    if control_rate_hz > 0 and "control_dt" in names and "control_dt" not in given:
        given = {**given, "control_dt": 1.0 / control_rate_hz}
    try:
        return json.loads(json.dumps(dataclasses.asdict(cls(**given)), default=list))
    except (TypeError, ValueError) as err:
        raise ExportError(f"{path or 'safety limits'}: invalid ({err})") from None


# Sections of a ROS 2 parameter file that the policy node reads, in the order it applies them (later wins).
_ROS_SECTIONS = ("/**", "robo_policy_node", "/robo_policy_node")


def _limits_section(raw: Any, path: Path) -> dict[str, Any]:
    """The safety limits in a plain map, a file with a ``safety:`` section, or a ROS 2 parameter file (the
    per-robot ``hardware/robots/*_deploy.yaml``: ``/**: ros__parameters: safety: {...}``), so the artifact can be
    exported with the very file the node will run with."""
    if isinstance(raw, dict) and any(isinstance(raw.get(name), dict) and "ros__parameters" in raw[name]
                                     for name in _ROS_SECTIONS):
        merged: dict[str, Any] = {}
        for name in _ROS_SECTIONS:
            if name not in raw:
                continue
            params = raw[name].get("ros__parameters") if isinstance(raw[name], dict) else None
            if not isinstance(params, dict):
                raise ExportError(f"{path}: '{name}' needs a 'ros__parameters' mapping")
            safety = params.get("safety") or {}
            # ROS also accepts dotted names (safety.max_step_pos: 0.02) for nested parameters.
            dotted = {k[len("safety."):]: v for k, v in params.items() if str(k).startswith("safety.")}
            if not isinstance(safety, dict):
                raise ExportError(f"{path}: '{name}: ros__parameters: safety' must be a mapping of limits")
            merged.update({**safety, **dotted})
        if not merged:
            raise ExportError(f"{path} is a ROS parameter file without a 'safety:' section under ros__parameters")
        return merged
    if isinstance(raw, dict) and isinstance(raw.get("safety"), dict):
        raw = raw["safety"]  # a robot YAML with a safety: section
    if not isinstance(raw, dict) or not raw:
        raise ExportError(f"{path} must hold a mapping of safety limits, a 'safety:' section, or a ROS parameter "
                          "file with one under ros__parameters")
    return raw


def _safety_dataclass() -> type | None:
    """hardware.safety's limits dataclass if that module exists (the ROS side owns it), else None."""
    try:
        import hardware.safety as safety
    except ImportError:
        return None
    for name in ("SafetyLimits", "SafetyConfig", "Limits"):
        cls = getattr(safety, name, None)
        if cls is not None and dataclasses.is_dataclass(cls):
            return cls
    return None


def provenance_chain(checkpoint: Path) -> list[dict[str, Any]]:
    """Every checkpoint on the teacher chain, newest first, with what its config.json recorded."""
    from policies.checkpoint import read_config

    stages, seen, current = [], set(), Path(checkpoint)
    while current is not None and current.resolve() not in seen:
        seen.add(current.resolve())
        config = read_config(current)
        extra = config.get("extra") or {}
        stages.append({"name": extra.get("stage") or config["policy_kind"], "checkpoint": str(current),
                       "policy_kind": config["policy_kind"], "weights_sha256": config.get("weights_sha256"),
                       "success_rate": extra.get("success_rate"), "eval_episodes": extra.get("eval_episodes"),
                       "step": extra.get("step"), "env_steps": extra.get("env_steps")})
        teacher = extra.get("teacher") or extra.get("init_checkpoint")
        current = Path(teacher) if teacher and Path(teacher).exists() else None
    return stages


def _steered(path: Path) -> tuple[Path, Any, dict[str, Any]] | None:
    """For a noise-PPO run's folder (noise_policy.json): the base checkpoint it steers, the steered policy (base
    EMA weights, as a checkpoint ships) and its provenance stage; None for an ordinary checkpoint."""
    from policies.checkpoint import _sha256
    from robo.rl.noise_ppo import WEIGHTS_FILE, load_noise_policy, read_noise_policy

    meta = read_noise_policy(path)
    if meta is None:
        return None
    base = Path(meta["base_checkpoint"])
    if not base.is_dir():
        raise ExportError(f"{path} steers {base}, which does not exist; export from where the run was made")
    actor = load_noise_policy(path)
    extra = meta.get("extra") or {}
    stage = {"name": extra.get("stage", "online_ppo_noise"), "checkpoint": str(path), "policy_kind": "noise_steered",
             "weights_sha256": _sha256(path / WEIGHTS_FILE), "success_rate": extra.get("success_rate"),
             "eval_episodes": extra.get("eval_episodes"), "step": extra.get("iteration"),
             "env_steps": extra.get("env_steps")}
    return base, actor.shipped().eval(), stage  # the base as loaded for evaluation (EMA weights)


def export(config: ExportConfig) -> dict[str, Any]:
    """Write the artifact; returns its manifest."""
    from policies.artifact import save_artifact
    from policies.checkpoint import load_checkpoint, read_config

    ckpt = Path(config.checkpoint)
    steered, noise_stage = None, None
    found = _steered(ckpt)
    if found is not None:  # the steered policy: the base checkpoint's records, the noise run on top
        ckpt, steered, noise_stage = found
    meta = read_config(ckpt)
    extra = meta.get("extra") or {}
    gate = None
    if config.gate_report is not None:
        report = _read_structured(Path(config.gate_report))
        gate = (report or {}).get("student_gate") if isinstance(report, dict) else None
        if not isinstance(gate, dict) or "passed" not in gate:
            raise ExportError(f"{config.gate_report} has no student_gate verdict (write it with robo finetune)")
        if not gate["passed"]:
            raise ExportError(f"the student did not pass its gate ({gate.get('reason', 'no reason recorded')}); "
                              f"it does not ship")
    rate = config.control_rate_hz or float(extra.get("fps") or 0)
    if rate <= 0:
        raise ExportError(f"{ckpt} does not record its dataset's rate; pass --control-rate-hz")
    stages = ([noise_stage] if noise_stage is not None else []) + provenance_chain(ckpt)
    if config.stage_results is not None:
        more = _read_structured(Path(config.stage_results))
        if not isinstance(more, list):
            raise ExportError(f"{config.stage_results} must hold a list of stages")
        stages.extend(more)
    provenance = {"task": extra.get("task"), "dataset": extra.get("dataset"),
                  "robot_config": extra.get("robot_config"), "stages": stages, "student_gate": gate,
                  "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    policy = steered if steered is not None else load_checkpoint(ckpt, use_ema=True)
    manifest = save_artifact(config.output, policy, control_rate_hz=rate,
                             safety_limits=resolve_safety_limits(config.safety_limits, rate), provenance=provenance,
                             action_meaning="OSC_POSE deltas: dx dy dz (x0.05 m) droll dpitch dyaw (x0.5 rad), "
                                            "gripper (-1 open, +1 close)",
                             inference_steps=config.inference_steps)
    log.info("exported %s -> %s (content %s)", config.checkpoint, config.output, manifest["content_sha256"][:12])
    return manifest
