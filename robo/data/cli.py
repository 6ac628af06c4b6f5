"""``robo data ...`` subcommands: check, repair, info, merge, filter, render, import-dp, import-robomimic
(alias import-robosuite: robosuite's own demo.hdf5 files import through the same replay), import-session (a
deployment session bag)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def add_data_commands(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="inspect, validate, repair, merge and convert datasets")
    sub = data.add_subparsers(dest="data_command", required=True)

    p = sub.add_parser("check", help="validate a dataset (never writes); exit 1 if damaged, or if it is a zarr-2 "
                                     "store whose torn tail zarr-2 readers refuse")
    p.add_argument("path", type=Path)
    p.set_defaults(func=_check)

    p = sub.add_parser("repair", help="drop a torn tail and any episodes from the first damaged step on")
    p.add_argument("path", type=Path)
    p.set_defaults(func=_repair)

    p = sub.add_parser("info", help="summarise a dataset")
    p.add_argument("path", type=Path)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_info)

    sources = ("teleop", "scripted", "policy", "imported", "deployment")  # = schema.PROVENANCE_SOURCES (not imported: keep startup fast)
    for name, help_text in (("merge", "copy the episodes of one or more datasets into a new dataset"),
                            ("filter", "copy the episodes of a dataset that pass the filters into a new dataset")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("sources", type=Path, nargs="+" if name == "merge" else 1, metavar="SRC")
        p.add_argument("-o", "--output", type=Path, required=True, help="new dataset path (must not exist)")
        p.add_argument("--success-only", action="store_true", help="keep only successful episodes")
        p.add_argument("--source", choices=sources, nargs="+", action="extend", dest="source_filter",
                       help="keep only episodes with these provenance sources")
        p.add_argument("--zarr-format", type=int, choices=(2, 3), default=3)
        p.add_argument("--compression", choices=("lz4", "zstd", "none"), default="zstd")
        p.set_defaults(func=_merge)

    p = sub.add_parser("render", help="render an episode: PNG contact sheet (or trajectory plot) or mp4")
    p.add_argument("path", type=Path)
    p.add_argument("--episode", type=int, required=True, help="episode index (negative counts from the end)")
    p.add_argument("-o", "--output", type=Path, required=True, help="OUT.png or OUT.mp4 (must not exist)")
    p.add_argument("--camera", dest="camera_keys", nargs="+", action="extend", metavar="KEY",
                   help="image keys to show (default: every *_rgb key)")
    p.add_argument("--every", type=int, default=None, help="show every N-th step (default: fit 24 frames / all)")
    p.set_defaults(func=_render)

    p = sub.add_parser("import-dp", help="import a Diffusion Policy zarr (data/<key>, meta/episode_ends)")
    p.add_argument("source", type=Path, metavar="SRC")
    p.add_argument("-o", "--output", type=Path, required=True, help="new dataset path (must not exist)")
    p.add_argument("--task", required=True, help="task name to record, e.g. PushT")
    p.add_argument("--fps", type=float, required=True, help="control rate the source was recorded at")
    p.add_argument("--map", dest="key_map", nargs="+", action="extend", default=[], metavar="SRC=DST",
                   help="rename source keys (img=agentview_rgb); SRC= drops a key")
    p.add_argument("--zarr-format", type=int, choices=(2, 3), default=3)
    p.set_defaults(func=_import_dp)

    p = sub.add_parser("import-robomimic", aliases=["import-robosuite"],
                       help="replay a robomimic HDF5 or a robosuite demo.hdf5 in the sim into a new dataset")
    p.add_argument("source", type=Path, metavar="SRC.hdf5")
    p.add_argument("-o", "--output", type=Path, required=True, help="new dataset path (must not exist)")
    p.add_argument("--cameras", nargs="+", action="extend", default=[], metavar="CAM",
                   help="robosuite cameras to render (agentview, robot0_eye_in_hand)")
    p.add_argument("--image-size", type=int, default=84)
    p.add_argument("--depth", action="store_true", help="also record <cam>_depth in mm")
    p.add_argument("--limit", type=int, default=None, help="import only the first N demos")
    p.add_argument("--use-model-xml", choices=("auto", "always", "never"), default="auto",
                   help="reset to each demo's model_file XML (auto: only when the states do not fit our model)")
    p.add_argument("--zarr-format", type=int, choices=(2, 3), default=3)
    p.set_defaults(func=_import_robomimic)

    from robo.config_cli import add_dataclass_args
    from robo.data.session_import import SessionImportConfig

    p = sub.add_parser("import-session", help="a deployment session bag (the node's record_bag) into dataset steps "
                                              "with per-step operator interventions")
    p.add_argument("bag", type=Path, metavar="BAG", help="the rosbag2 directory the policy node recorded")
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="dataset to create, or to append to when its schema matches")
    add_dataclass_args(p, SessionImportConfig)
    p.set_defaults(func=_import_session)


def _check(args: argparse.Namespace) -> int:
    from robo.data.integrity import check

    report = check(args.path, progress=True)
    print(report.summary())
    for problem in report.problems:
        print(f"  problem: {problem}")
    return 0 if report.clean else 1


def _repair(args: argparse.Namespace) -> int:
    from robo.data.integrity import check, repair

    before, dropped = repair(args.path, progress=True)
    after = check(args.path)
    print(f"dropped a torn tail of {before.torn_tail.describe()} and {dropped} damaged episodes")
    print(after.summary())
    return 0 if after.clean else 1


def summarize(path: Path) -> dict:
    from robo.data.store import ZarrDataset

    with ZarrDataset.open(path) as ds:
        episodes = ds.episodes
        lengths = np.diff(np.concatenate([[0], ds.episode_ends]))
        sources: dict[str, int] = {}
        for e in episodes:
            sources[e.source] = sources.get(e.source, 0) + 1
        return {
            "path": str(path),
            "zarr_format": ds.zarr_format,
            "task": ds.schema.task,
            "fps": ds.schema.fps,
            "episodes": ds.n_episodes,
            "steps": ds.n_steps,
            "success_rate": float(np.mean([e.success for e in episodes])) if episodes else None,
            "episode_length": {"min": int(lengths.min()), "mean": float(lengths.mean()), "max": int(lengths.max())}
            if len(lengths) else None,
            "sources": sources,
            "obs": {k: f"{list(v.shape)} {v.dtype}" for k, v in ds.schema.obs.items()},
            "action": f"{list(ds.schema.action.shape)} {ds.schema.action.dtype}",
            **({"step_arrays": {k: f"{list(v.shape)} {v.dtype}" for k, v in ds.schema.step_arrays.items()}}
               if ds.schema.step_arrays else {}),
            "robot_config": ds.schema.robot_config,
        }


def _info(args: argparse.Namespace) -> int:
    info = summarize(args.path)
    if args.json:
        print(json.dumps(info))
        return 0
    width = max(len(k) for k in info)
    for key, value in info.items():
        if isinstance(value, dict) and key in ("obs", "step_arrays", "robot_config", "episode_length", "sources"):
            print(f"{key:<{width}}")
            for k, v in value.items():
                print(f"  {k}: {v}")
        else:
            print(f"{key:<{width}}  {value}")
    return 0


def _merge(args: argparse.Namespace) -> int:
    from robo.data.tools import merge

    n = merge(list(args.sources), args.output, success_only=args.success_only,
              sources_filter=set(args.source_filter) if args.source_filter else None,
              zarr_format=args.zarr_format, compression=args.compression, progress=True)
    print(f"wrote {n} episodes to {args.output}")
    return 0


def _render(args: argparse.Namespace) -> int:
    from robo.data.render import render_episode

    out = render_episode(args.path, args.episode, args.output, camera_keys=args.camera_keys, every=args.every)
    print(f"wrote {out}")
    return 0


def _import_dp(args: argparse.Namespace) -> int:
    from robo.data.importers import import_diffusion_policy
    from robo.data.schema import DatasetError

    key_map: dict[str, str | None] = {}
    for item in args.key_map:
        if "=" not in item:
            raise DatasetError(f"--map takes SRC=DST pairs, got '{item}'")
        src, dst = item.split("=", 1)
        key_map[src] = dst or None
    n = import_diffusion_policy(args.source, args.output, task=args.task, fps=args.fps, key_map=key_map,
                                zarr_format=args.zarr_format)
    print(f"imported {n} episodes into {args.output}")
    return 0


def _import_robomimic(args: argparse.Namespace) -> int:
    from robo.data.importers import RobomimicImportConfig, import_robomimic

    config = RobomimicImportConfig(cameras=tuple(args.cameras), image_size=args.image_size, depth=args.depth,
                                   limit=args.limit, use_model_xml=args.use_model_xml, zarr_format=args.zarr_format)
    n = import_robomimic(args.source, args.output, config=config, progress=True)
    from robo.data.store import ZarrDataset

    with ZarrDataset.open(args.output) as ds:
        origin = ds.schema.robot_config.get("imported_from", {}).get("format", "robomimic")
        clipped = sum(int(e.extra.get("actions_clipped", 0)) for e in ds.episodes)
    note = (f"; {clipped} action values outside the controller's input range clipped, as its controller did"
            if clipped else "")
    print(f"imported {n} {origin} demos into {args.output}{note}")
    return 0


def _import_session(args: argparse.Namespace) -> int:
    from robo.config_cli import dataclass_from_args
    from robo.data.session_import import SessionImportConfig, import_session

    report = import_session(args.bag, args.output, dataclass_from_args(SessionImportConfig, args))
    print(report.summary())
    return 0
