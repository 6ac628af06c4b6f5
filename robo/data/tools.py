"""Dataset tools: merge / filter datasets into a new one.

The output is written into a staging folder beside it and renamed into place only when the merge succeeded
(``robo.data.staging``), so a failure never leaves a half-written dataset at the output path. Rendering an
episode lives in ``robo.data.render``.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np

from robo.data.schema import PROVENANCE_SOURCES, DatasetError, DatasetSchema, EpisodeInfo
from robo.data.staging import refuse_existing, staged_output
from robo.data.store import Compression, ZarrDataset

__all__ = ["merge", "copy_steps"]

log = logging.getLogger(__name__)

_COPY_BLOCK_BYTES = 64 << 20  # at most ~64 MiB of one episode in memory while copying


def copy_steps(src: ZarrDataset, index: int, writer_target: ZarrDataset, info: EpisodeInfo) -> int:
    """Stream episode ``index`` of ``src`` into ``writer_target`` in blocks; returns the new episode index."""
    start, end = src.episode_bounds(index)
    keys = writer_target.schema.array_specs()
    step_bytes = sum(int(np.prod(s.shape, dtype=np.int64)) * np.dtype(s.dtype).itemsize for s in keys.values())
    block = max(1, _COPY_BLOCK_BYTES // max(1, step_bytes))
    writer = writer_target.new_episode()
    try:
        for lo in range(start, end, block):
            hi = min(end, lo + block)
            writer.add_steps({k: src.array(k)[lo:hi] for k in keys})
        return writer.commit(info)
    except BaseException:
        writer.discard()
        raise


def _selected(infos: list[EpisodeInfo], success_only: bool, sources_filter: set[str] | None) -> list[int]:
    return [i for i, e in enumerate(infos)
            if (not success_only or e.success) and (sources_filter is None or e.source in sources_filter)]


def merge(sources: list[Path], output: Path, *, success_only: bool = False, sources_filter: set[str] | None = None,
          zarr_format: int = 3, compression: Compression = "zstd", progress: bool = False) -> int:
    """Copy the selected episodes of ``sources`` (in order) into a new dataset at ``output``.

    With one source this is a filter. Schemas must agree (observations, action, fps, task); the output takes the
    first source's schema, including its robot_config. Each copied episode keeps its EpisodeInfo and gains
    ``extra["merged_from"] = {"path", "episode"}`` (an earlier ``merged_from`` moves to ``extra["merged_history"]``).
    Returns the number of episodes written; refuses to write an empty dataset.
    """
    if not sources:
        raise DatasetError("no source datasets given; pass at least one dataset path")
    if sources_filter is not None:
        unknown = set(sources_filter) - set(PROVENANCE_SOURCES)
        if unknown:
            raise DatasetError(f"unknown provenance source(s) {sorted(unknown)}; choose from {PROVENANCE_SOURCES}")
    if compression not in ("lz4", "zstd", "none"):
        raise DatasetError(f"compression must be lz4, zstd or none, got '{compression}'")
    output = Path(output)
    refuse_existing(output)
    # Read every schema and episode list first, so nothing is created when a later source does not fit.
    schema: DatasetSchema | None = None
    plan: list[tuple[Path, list[int]]] = []
    for path in map(Path, sources):
        if path.resolve() == output.resolve():
            raise DatasetError(f"{path} is both a source and the output; choose a new output path")
        with ZarrDataset.open(path, "r") as ds:
            if schema is None:
                schema = ds.schema
            else:
                diff = schema.mismatch(ds.schema)
                if diff:
                    raise DatasetError(f"{path} does not match {sources[0]}: {diff}; merge only datasets of one schema")
            plan.append((path, _selected(ds.episodes, success_only, sources_filter)))
    total = sum(len(idx) for _, idx in plan)
    if total == 0:
        raise DatasetError(f"no episodes match the filter (success_only={success_only}, sources="
                           f"{sorted(sources_filter) if sources_filter else 'any'}); nothing written")
    assert schema is not None
    from tqdm import tqdm

    bar = tqdm(total=total, desc="merging episodes", unit="ep", disable=not progress)
    with staged_output(output) as staging:
        with ZarrDataset.create(staging, schema, zarr_format=zarr_format, compression=compression) as out:
            for path, indices in plan:
                with ZarrDataset.open(path, "r") as src:
                    infos = src.episodes
                    for i in indices:
                        info = dataclasses.replace(infos[i], extra=dict(infos[i].extra))
                        if "merged_from" in info.extra:
                            info.extra["merged_history"] = list(info.extra.get("merged_history", [])) + [
                                info.extra["merged_from"]]
                        info.extra["merged_from"] = {"path": str(path), "episode": i}
                        copy_steps(src, i, out, info)
                        bar.update(1)
            written = out.n_episodes
    bar.close()
    log.info("wrote %d episodes to %s", written, output)
    return written
