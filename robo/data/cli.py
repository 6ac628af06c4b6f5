"""``robo data ...`` subcommands: check, repair, info (merge / filter / render / import live beside them)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def add_data_commands(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="inspect, validate, repair, merge and convert datasets")
    sub = data.add_subparsers(dest="data_command", required=True)

    p = sub.add_parser("check", help="validate a dataset (never writes); exit 1 if damaged")
    p.add_argument("path", type=Path)
    p.set_defaults(func=_check)

    p = sub.add_parser("repair", help="drop a torn tail and any episodes from the first damaged step on")
    p.add_argument("path", type=Path)
    p.set_defaults(func=_repair)

    p = sub.add_parser("info", help="summarise a dataset")
    p.add_argument("path", type=Path)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_info)


def _check(args: argparse.Namespace) -> int:
    from robo.data.integrity import check

    report = check(args.path, progress=True)
    print(report.summary())
    for problem in report.problems:
        print(f"  problem: {problem}")
    return 0 if report.ok else 1


def _repair(args: argparse.Namespace) -> int:
    from robo.data.integrity import check, repair

    before, dropped = repair(args.path, progress=True)
    after = check(args.path)
    print(f"dropped a torn tail of {before.torn_tail_steps} steps and {dropped} damaged episodes")
    print(after.summary())
    return 0 if after.ok else 1


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
            "robot_config": ds.schema.robot_config,
        }


def _info(args: argparse.Namespace) -> int:
    info = summarize(args.path)
    if args.json:
        print(json.dumps(info))
        return 0
    width = max(len(k) for k in info)
    for key, value in info.items():
        if isinstance(value, dict) and key in ("obs", "robot_config", "episode_length", "sources"):
            print(f"{key:<{width}}")
            for k, v in value.items():
                print(f"  {k}: {v}")
        else:
            print(f"{key:<{width}}  {value}")
    return 0
