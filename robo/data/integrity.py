"""``robo data check`` and ``robo data repair``: find and cut damage without touching good episodes.

Two kinds of finding. *Damage* (``problems``): committed episodes that cannot be read as written; repair drops
them. A *torn tail* (``TornTail``): what an interrupted writer left past the last commit; our readers ignore it,
but on a zarr-2 store a tail inside the arrays' shape makes zarr-2 readers (Diffusion Policy's ReplayBuffer)
refuse the store, so check fails on it there too. Check, repair and append count the tail with the same
function, so they agree on what it holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from robo.data.store import ZarrDataset, _open_group, _read_layout, committed_episode_ends
from robo.data.torn_tail import TornTail


@dataclass
class CheckReport:
    path: Path
    zarr_format: int = 3  # the store's format: a torn tail matters to zarr-2 readers only on a zarr-2 store
    n_episodes: int = 0
    n_steps: int = 0
    torn_tail: TornTail = TornTail()  # left past the last commit by an interrupted writer; repairable
    problems: list[str] = field(default_factory=list)  # damage within committed episodes
    first_bad_step: int | None = None  # the earliest committed step that cannot be read

    @property
    def ok(self) -> bool:
        """Every committed episode reads back as written (our readers open the store)."""
        return not self.problems

    @property
    def zarr2_readers_refuse(self) -> bool:
        """A zarr-2 store that Diffusion Policy's ReplayBuffer would refuse until it is repaired."""
        return self.zarr_format == 2 and self.torn_tail.blocks_zarr2_readers

    @property
    def clean(self) -> bool:
        """What ``robo data check`` exits 0 on: no damage, and no tail that a reader of this format trips on."""
        return self.ok and not self.zarr2_readers_refuse

    def summary(self) -> str:
        state = "DAMAGED" if not self.ok else "NEEDS REPAIR" if self.zarr2_readers_refuse else "OK"
        line = f"{self.path}: {state}, {self.n_episodes} episodes, {self.n_steps} steps"
        if self.zarr2_readers_refuse:
            line += (f"; torn tail of {self.torn_tail.describe()}: zarr-2 readers (Diffusion Policy's ReplayBuffer) "
                     f"refuse the store until `robo data repair` (or the next append) drops it")
        elif self.torn_tail:
            line += f"; torn tail of {self.torn_tail.describe()} (ignored by readers; `robo data repair` drops it)"
        return line


def _scan_chunks(ds: ZarrDataset, report: CheckReport, progress: bool) -> None:
    """Every chunk under the committed range must exist and decode (zarr reads a missing chunk as zeros)."""
    n = ds.n_steps
    keys = ds.keys
    for key in tqdm(keys, desc="checking arrays", disable=not progress, leave=False):
        arr = ds.array(key)
        step = int(arr.chunks[0])
        store_path = Path(ds.path) / "data" / key
        for c in range(0, (n + step - 1) // step):
            chunk_key = arr.metadata.encode_chunk_key((c,) + (0,) * (arr.ndim - 1))
            bad = None
            if not (store_path / chunk_key).exists():
                bad = f"data/{key}: chunk {chunk_key} (steps {c * step}-{min(n, (c + 1) * step) - 1}) is missing"
            else:
                try:
                    block = arr[c * step: min(n, (c + 1) * step)]
                    if np.issubdtype(block.dtype, np.floating) and not np.all(np.isfinite(block)):
                        bad = f"data/{key}: non-finite values in steps {c * step}-{min(n, (c + 1) * step) - 1}"
                except Exception as exc:  # codec errors on corrupted bytes
                    bad = f"data/{key}: chunk {chunk_key} does not decode ({type(exc).__name__})"
            if bad:
                report.problems.append(bad)
                first = c * step
                report.first_bad_step = first if report.first_bad_step is None else min(report.first_bad_step, first)
                break


def check(path: str | Path, *, progress: bool = False) -> CheckReport:
    """Validate a dataset; never writes. Raises DatasetError only when it is not a dataset at all."""
    path = Path(path)
    report = CheckReport(path)
    root = _open_group(path, "r")
    layout = _read_layout(root, path)
    ends = committed_episode_ends(layout.raw_ends)
    ds = ZarrDataset(path, root, layout, writable=False, allow_truncated=True)
    report.zarr_format = ds.zarr_format
    # Count every committed episode, including any a truncated array no longer backs (repair drops those).
    report.n_episodes, report.n_steps = min(len(ends), len(layout.raw_episodes)), ds.n_steps
    if len(ends) > ds.n_episodes:
        lengths = {k: int(a.shape[0]) for k, a in layout.arrays.items()}
        short = min(lengths, key=lengths.get)
        report.problems.append(f"data/{short} has {lengths[short]} steps but committed episodes end at {ends[-1]} (truncated)")
        report.first_bad_step = lengths[short]
    # Counted from the state repair starts from, so check and repair report the same tail.
    report.torn_tail = ds.torn_tail()
    if len(layout.raw_episodes) < len(ends):
        report.problems.append(f"{len(ends)} committed episodes but {len(layout.raw_episodes)} episode records")
    for i, info in enumerate(ds.episodes):
        start, end = ds.episode_bounds(i)
        if info.length != end - start:
            report.problems.append(f"episode {i}: record says {info.length} steps, episode_ends say {end - start}")
    _scan_chunks(ds, report, progress)
    return report


def repair(path: str | Path, *, progress: bool = False) -> tuple[CheckReport, int]:
    """Drop the torn tail and any committed episodes from the first damaged step on. Returns (the report from
    before the repair, the number of damaged episodes dropped); ``report.torn_tail`` is the tail it dropped."""
    report = check(path, progress=progress)
    # Opening for append drops the torn tail (and, allowed here, episodes a truncated array no longer backs).
    with ZarrDataset.open(path, mode="a", allow_truncated=True) as ds:
        keep = ds.n_episodes
        if report.first_bad_step is not None:
            keep = min(keep, int(np.searchsorted(ds.episode_ends, report.first_bad_step, side="right")))
        ds.truncate_episodes(keep)
    return report, report.n_episodes - keep
