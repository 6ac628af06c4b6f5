"""Import other projects' demonstration formats into our store.

* Diffusion Policy replay-buffer zarr (``data/<key>``, ``meta/episode_ends``): arrays are copied as they are.
* robomimic HDF5 (``data/demo_i/{states, actions, rewards, dones}``, ``data.attrs["env_args"]``) and robosuite's
  own demonstration files (``DataCollectionWrapper`` + ``gather_demonstrations_as_hdf5``: ``data/demo_i/{states,
  actions}``, ``data.attrs["env_info"]``): each demo is *replayed* in our ``SimEnv`` by setting the recorded MuJoCo
  states, so the observations come out in our keys, frames and units (cameras at any size, depth in mm) instead of
  robomimic's. Actions are OSC_POSE deltas, like ours. A teleop device can send values slightly outside the
  controller's input range (a robosuite file can hold 1.05 or -1.02); the controller clipped them before acting,
  so the importer stores the clipped values (what the arm executed) and says how many it clipped.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from robo.data.schema import ACTION_KEY, STEP_KEYS, ArraySpec, DatasetError, DatasetSchema, EpisodeInfo
from robo.data.store import Compression, ZarrDataset
from robo.data.staging import refuse_existing, staged_output

log = logging.getLogger(__name__)

# robomimic / robosuite env names -> our sim task names.
ROBOMIMIC_TASKS: dict[str, str] = {"Lift": "Lift", "PickPlaceCan": "PickPlaceCan", "NutAssemblySquare": "NutAssemblySquare"}


# ---------------------------------------------------------------------------------------------- Diffusion Policy

def import_diffusion_policy(src: str | Path, output: str | Path, *, task: str, fps: float,
                            key_map: dict[str, str | None] | None = None, demos_successful: bool = True,
                            zarr_format: int = 3, compression: Compression = "zstd") -> int:
    """Convert a Diffusion Policy zarr into a new dataset; returns the number of episodes.

    ``key_map`` renames source keys (``{"img": "agentview_rgb", "state": "agent_pos"}``); mapping a key to None
    drops it; unmapped keys keep their names. ``action`` is required. Keys that map to our step keys (reward,
    terminal, truncated, success, timestamp) fill those arrays; otherwise timestamps are ``t / fps`` and reward 0.
    DP files carry no outcome, so every episode gets ``success=demos_successful`` (recorded as assumed in
    ``extra``), marked on its last step.
    """
    import zarr

    src, output = Path(src), Path(output)
    refuse_existing(output)
    if fps <= 0:
        raise DatasetError(f"fps must be positive, got {fps}")
    try:
        root = zarr.open_group(str(src), mode="r")
        data, ends_raw = root["data"], root["meta"]["episode_ends"][:]
    except Exception as exc:  # noqa: BLE001 - zarr raises many types for a missing path or group
        raise DatasetError(f"{src} is not a Diffusion Policy zarr (needs data/<key> and meta/episode_ends): "
                           f"{type(exc).__name__}") from None
    key_map = dict(key_map or {})
    unknown = set(key_map) - set(data.array_keys())
    if unknown:
        raise DatasetError(f"key_map names {sorted(unknown)} that are not in {src}/data (it has {sorted(data.array_keys())})")
    mapping = {k: key_map.get(k, k) for k in sorted(data.array_keys()) if key_map.get(k, k) is not None}
    if ACTION_KEY not in mapping.values():
        raise DatasetError(f"{src} has no '{ACTION_KEY}' array (keys {sorted(data.array_keys())}); map one with key_map")
    ends = np.asarray(ends_raw, dtype=np.int64)
    lengths = {int(data[k].shape[0]) for k in mapping}
    if len(ends) == 0 or np.any(np.diff(np.concatenate([[0], ends])) <= 0) or len(lengths) != 1 or ends[-1] > min(lengths):
        raise DatasetError(f"{src}: meta/episode_ends {ends[:5].tolist()}... does not fit data arrays of lengths "
                           f"{sorted(lengths)}; the source is damaged")
    obs = {dst: ArraySpec(tuple(data[k].shape[1:]), str(data[k].dtype))
           for k, dst in mapping.items() if dst != ACTION_KEY and dst not in STEP_KEYS}
    action_src = next(k for k, dst in mapping.items() if dst == ACTION_KEY)
    schema = DatasetSchema(obs=obs, action=ArraySpec(tuple(data[action_src].shape[1:]), str(data[action_src].dtype)),
                           fps=float(fps), task=task,
                           robot_config={"imported_from": "diffusion_policy", "source_path": str(src),
                                         "key_map": mapping})
    starts = np.concatenate([[0], ends[:-1]])
    with staged_output(output) as staging:
        with ZarrDataset.create(staging, schema, zarr_format=zarr_format, compression=compression) as out:
            for i, (s, e) in enumerate(zip(starts.tolist(), ends.tolist())):
                steps = {dst: data[k][s:e] for k, dst in mapping.items()}
                n = e - s
                steps.setdefault("timestamp", np.arange(n, dtype=np.float64) / fps)
                for flag in ("success", "terminal"):
                    if flag not in steps:
                        steps[flag] = np.zeros(n, bool)
                        steps[flag][-1] = demos_successful
                out.append_episode(steps, EpisodeInfo(
                    source="imported", success=demos_successful,
                    extra={"origin": "diffusion_policy", "source_path": str(src), "source_episode": i,
                           "success_assumed": True}))
            count = out.n_episodes
    return count


# ---------------------------------------------------------------------------------------------- robomimic

@dataclass
class RobomimicImportConfig:
    cameras: tuple[str, ...] = ()  # robosuite camera names to render, e.g. ("agentview", "robot0_eye_in_hand")
    image_size: int = 84  # rendered height = width
    depth: bool = False  # also <prefix>_depth in mm
    limit: int | None = None  # import only the first N demos (in demo-number order)
    use_model_xml: Literal["auto", "always", "never"] = "auto"
    """Per-demo ``model_file`` XML: "auto" loads it only when the recorded states do not fit our task model
    (e.g. a file from another robosuite version), "always" reloads it for every demo (exact but ~2 s each)."""
    zarr_format: int = 3
    compression: Compression = "zstd"


def _demo_names(data: Any) -> list[str]:
    names = [n for n in data.keys() if re.fullmatch(r"demo_\d+", n)]
    return sorted(names, key=lambda n: int(n.split("_")[1]))


def _env_args(data: Any, path: Path) -> tuple[str, dict[str, Any], str]:
    """(env name, env kwargs, file format) from robomimic's ``env_args`` or robosuite's ``env_info``."""
    if "env_args" in data.attrs:  # robomimic: {"env_name", "type", "env_kwargs": {...}}
        try:
            env_args = json.loads(data.attrs["env_args"])
            return str(env_args["env_name"]), dict(env_args.get("env_kwargs", {})), "robomimic"
        except (ValueError, KeyError, TypeError):
            raise DatasetError(f"{path}: data.attrs['env_args'] is not robomimic JSON with env_name") from None
    if "env_info" in data.attrs:  # robosuite: the suite.make() kwargs themselves, env_name among them
        try:
            env_info = dict(json.loads(data.attrs["env_info"]))
        except (ValueError, TypeError):
            raise DatasetError(f"{path}: data.attrs['env_info'] is not JSON; the file is damaged") from None
        name = env_info.pop("env_name", None) or data.attrs.get("env")
        if not name:
            raise DatasetError(f"{path}: neither data.attrs['env_info'] nor data.attrs['env'] names the environment")
        return str(name), env_info, "robosuite"
    raise DatasetError(f"{path}: data has neither robomimic's 'env_args' nor robosuite's 'env_info' attribute; it is "
                       "not a robomimic or robosuite demonstration file")


def _arm_controller(env_kwargs: dict[str, Any]) -> dict[str, Any]:
    """The arm's controller config, from a flat (robosuite <= 1.4) or composite (1.5) ``controller_configs``."""
    ctrl = env_kwargs.get("controller_configs") or {}
    parts = ctrl.get("body_parts") or {}
    arm = parts.get("right") or (parts.get("arms") or {}).get("right")  # robosuite 1.5 composite config
    return arm if isinstance(arm, dict) else ctrl


def _action_limits(env_kwargs: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The range robosuite clips each action dimension to before acting: the arm controller's input_min/input_max
    (scalars or one per dimension; default +-1) for the six arm dimensions, [-1, 1] for the gripper."""
    arm = _arm_controller(env_kwargs)
    low, high = np.full(7, -1.0), np.full(7, 1.0)
    try:
        low[:6] = np.broadcast_to(np.asarray(arm.get("input_min", -1.0), dtype=np.float64), (6,))
        high[:6] = np.broadcast_to(np.asarray(arm.get("input_max", 1.0), dtype=np.float64), (6,))
    except ValueError:
        raise DatasetError(f"controller input_min/input_max {arm.get('input_min')}/{arm.get('input_max')} are not "
                           "scalars or 6 values") from None
    return low, high


def _check_controller(env_kwargs: dict[str, Any], path: Path) -> None:
    ctrl = _arm_controller(env_kwargs)
    kind = ctrl.get("type")
    if kind not in (None, "OSC_POSE"):
        raise DatasetError(f"{path} was recorded with the {kind} controller; only OSC_POSE delta actions can be imported")
    if ctrl.get("control_delta") is False or ctrl.get("input_type") == "absolute":
        raise DatasetError(f"{path} holds absolute OSC actions; only delta actions can be imported")


@dataclass
class _Clipped:
    """Action values outside the controller's input range in one demo (the controller clipped them)."""

    values: int = 0  # action entries changed by clipping
    steps: int = 0  # steps with at least one clipped entry
    largest: float = 0.0  # the largest |value| before clipping


def _clip_actions(actions: np.ndarray, limits: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, _Clipped]:
    low, high = limits
    clipped = np.clip(actions, low, high).astype(np.float32)
    changed = clipped != actions
    return clipped, _Clipped(int(changed.sum()), int(changed.any(axis=1).sum()), float(np.abs(actions).max()))


def _replay_demo(env: Any, demo: Any, name: str, path: Path, use_xml: bool,
                 limits: tuple[np.ndarray, np.ndarray]) -> tuple[dict[str, np.ndarray], bool, _Clipped]:
    """Regenerate our observations for one demo; returns the step arrays, the final success and what was clipped."""
    rs = env.unwrapped_robosuite
    states = np.asarray(demo["states"][:], dtype=np.float64)
    actions = np.asarray(demo["actions"][:], dtype=np.float32)
    n = len(states)
    if n == 0 or actions.shape != (n, 7):
        raise DatasetError(f"{path}:{name} has {n} states and actions of shape {actions.shape}; expected (T, 7)")
    if not np.all(np.isfinite(actions)):
        raise DatasetError(f"{path}:{name} has NaN or infinite actions; the file is damaged")
    actions, clipped = _clip_actions(actions, limits)
    env.reset()
    if use_xml:
        if "model_file" not in demo.attrs:
            raise DatasetError(f"{path}:{name} has no model_file attribute to load; import with use_model_xml='never'")
        rs.reset_from_xml_string(rs.edit_model_xml(demo.attrs["model_file"]))
        env._disable_expensive_render_effects()  # the XML reset builds a new render context
    expected = 1 + rs.sim.model.nq + rs.sim.model.nv
    if states.shape[1] != expected:
        raise DatasetError(f"{path}:{name} states have {states.shape[1]} values but the {env.config.task} model needs "
                           f"{expected}; the file comes from another model (try use_model_xml='always')")
    obs_steps: list[dict[str, np.ndarray]] = []
    success = np.zeros(n, bool)
    for t in range(n):
        rs.sim.set_state_from_flattened(states[t])
        rs.sim.forward()
        if t > 0:
            success[t - 1] = bool(rs._check_success())  # step t-1's action led to this state
        obs_steps.append(env._convert(rs._get_observations(force_update=True)))
    # The state after the last action is not stored: execute that action once to see how the demo ended.
    rs.sim.set_state_from_flattened(states[-1])
    rs.sim.forward()
    _, _, _, _, step_info = env.step(actions[-1])
    success[-1] = bool(step_info["success"])
    steps = {k: np.stack([o[k] for o in obs_steps]) for k in obs_steps[0]}
    steps[ACTION_KEY] = actions
    steps["reward"] = np.asarray(demo["rewards"][:], np.float32) if "rewards" in demo else success.astype(np.float32)
    steps["terminal"] = np.asarray(demo["dones"][:]).astype(bool) if "dones" in demo else success.copy()
    steps["truncated"] = np.zeros(n, bool)
    steps["truncated"][-1] = not steps["terminal"][-1]  # a demo that stops without a terminal state was cut short
    steps["success"] = success
    steps["timestamp"] = np.arange(n, dtype=np.float64) / env.config.control_freq
    for key in ("reward", "terminal"):
        if steps[key].shape != (n,):
            raise DatasetError(f"{path}:{name}/{'rewards' if key == 'reward' else 'dones'} has shape "
                               f"{steps[key].shape}, expected ({n},)")
    return steps, bool(success[-1]), clipped


def import_robomimic(hdf5: str | Path, output: str | Path, *, cameras: tuple[str, ...] | list[str] = (),
                     image_size: int = 84, depth: bool = False, limit: int | None = None,
                     config: RobomimicImportConfig | None = None, progress: bool = False) -> int:
    """Replay a robomimic HDF5, or a robosuite demonstration file, in our SimEnv into a new dataset; returns the
    number of episodes imported. Each episode's ``extra["actions_clipped"]`` counts the action values clipped to
    the controller's input range (see the module docstring).

    Keyword arguments fill a :class:`RobomimicImportConfig`; pass ``config`` for the rest (model XML policy,
    zarr format).
    """
    import h5py

    cfg = config or RobomimicImportConfig(cameras=tuple(cameras), image_size=image_size, depth=depth, limit=limit)
    hdf5, output = Path(hdf5), Path(output)
    refuse_existing(output)
    if not hdf5.is_file():
        raise DatasetError(f"{hdf5} does not exist or is not a file; pass a robomimic .hdf5")
    if cfg.limit is not None and cfg.limit < 1:
        raise DatasetError(f"limit must be >= 1, got {cfg.limit}")
    try:
        f = h5py.File(hdf5, "r")
    except OSError as exc:
        raise DatasetError(f"{hdf5} is not a readable HDF5 file ({exc})") from None
    with f:
        if "data" not in f:
            raise DatasetError(f"{hdf5} has no 'data' group; it is not a robomimic or robosuite demonstration file")
        data = f["data"]
        env_name, env_kwargs, file_format = _env_args(data, hdf5)
        if env_name not in ROBOMIMIC_TASKS:
            raise DatasetError(f"{hdf5} is for env '{env_name}'; importable tasks are {sorted(ROBOMIMIC_TASKS)}")
        _check_controller(env_kwargs, hdf5)
        limits = _action_limits(env_kwargs)
        names = _demo_names(data)[: cfg.limit]
        if not names:
            raise DatasetError(f"{hdf5} holds no data/demo_<i> groups; nothing to import")
        from sim.env import EnvConfig, SimEnv

        robots = env_kwargs.get("robots", "Panda")
        robot = robots[0] if isinstance(robots, (list, tuple)) else robots
        try:
            env_cfg = EnvConfig(task=ROBOMIMIC_TASKS[env_name], robot=str(robot),
                                control_freq=int(env_kwargs.get("control_freq", 20)), cameras=tuple(cfg.cameras),
                                image_height=cfg.image_size, image_width=cfg.image_size, depth=cfg.depth)
            env_cfg.validate()
        except ValueError as exc:
            raise DatasetError(f"cannot build the sim for {hdf5}: {exc}") from None
        env = SimEnv(env_cfg)
        try:
            n_state = data[names[0]]["states"].shape[1]
            fits = n_state == 1 + env.unwrapped_robosuite.sim.model.nq + env.unwrapped_robosuite.sim.model.nv
            use_xml = cfg.use_model_xml == "always" or (cfg.use_model_xml == "auto" and not fits)
            robot_config = dict(env.robot_config())
            robot_config["imported_from"] = {"format": file_format, "path": str(hdf5), "env_name": env_name,
                                             "replayed_with_model_xml": use_xml}
            schema = DatasetSchema.from_spaces(env.observation_space, env.action_space, fps=env_cfg.control_freq,
                                               task=env_cfg.task, robot_config=robot_config)
            from tqdm import tqdm

            with staged_output(output) as staging:
                with ZarrDataset.create(staging, schema, zarr_format=cfg.zarr_format,
                                        compression=cfg.compression) as out:
                    total = _Clipped()
                    for name in tqdm(names, desc="replaying demos", unit="demo", disable=not progress):
                        steps, success, clipped = _replay_demo(env, data[name], name, hdf5, use_xml, limits)
                        out.append_episode(steps, EpisodeInfo(
                            source="imported", success=success,
                            extra={"origin": file_format, "source_path": str(hdf5), "demo": name,
                                   "actions_clipped": clipped.values}))
                        total = _Clipped(total.values + clipped.values, total.steps + clipped.steps,
                                         max(total.largest, clipped.largest))
                    count = out.n_episodes
        finally:
            env.close()
    if total.values:
        log.info("clipped %d action values in %d steps (largest |value| %.3f) to the controller's input range, "
                 "as robosuite's controller did when they were recorded", total.values, total.steps, total.largest)
    log.info("imported %d %s demos from %s into %s", count, file_format, hdf5, output)
    return count
