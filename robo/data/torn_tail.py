"""What an interrupted writer leaves past a store's last commit (a *torn tail*), counted in one place so that
``robo data check``, ``robo data repair`` and the next append agree on what it holds. See ``robo.data.store``'s
docstring for how a crash produces each part.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import zarr


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}" if n else ""


@dataclass(frozen=True)
class TornTail:
    """What an interrupted writer left past the last commit. check, repair and append all count it here, so they
    agree on what it holds."""

    steps: int = 0  # steps the longest data array holds past episode_ends[-1] (a crash inside a commit)
    end_entries: int = 0  # meta/episode_ends entries past the last valid commit
    records: int = 0  # episode records (meta attrs "episodes") past the last commit
    chunk_files: int = 0  # chunk files wholly past an array's shape (a crash mid-episode; no reader sees them)

    def __bool__(self) -> bool:
        return bool(self.steps or self.end_entries or self.records or self.chunk_files)

    @property
    def blocks_zarr2_readers(self) -> bool:
        """Diffusion Policy's ReplayBuffer (and loaders built on it) require every data array to end exactly at
        ``episode_ends[-1]``; they refuse a store with longer arrays or a stray ``episode_ends`` entry."""
        return self.steps > 0 or self.end_entries > 0

    def describe(self) -> str:
        parts = (_count(self.steps, "step"), _count(self.end_entries, "episode_ends entry", "episode_ends entries"),
                 _count(self.records, "episode record"), _count(self.chunk_files, "unused chunk file"))
        return ", ".join(p for p in parts if p) or "nothing"


def chunk_files_past(arr: zarr.Array, array_dir: Path, n_steps: int) -> list[Path]:
    """Chunk files of ``arr`` whose first step is at or past ``n_steps`` (the partly-used boundary chunk stays).

    Only the time index (the first one in a chunk key) is read: zarr-3's default keys are ``c/<t>/<j>/...``
    (folders), zarr-2's ``<t>.<j>...`` (files), so one directory listing finds them without walking every chunk.
    """
    top = array_dir / "c" if (array_dir / "c").is_dir() else array_dir
    if not top.is_dir():
        return []
    first_unused = -(-n_steps // int(arr.chunks[0]))  # ceil: the chunk after the one holding step n_steps - 1
    found: list[Path] = []
    for entry in os.scandir(top):
        head = re.split(r"[./]", entry.name, maxsplit=1)[0]
        if entry.name.startswith(".") or not head.isdigit() or int(head) < first_unused:
            continue  # metadata (.zarray, zarr.json), LocalStore temporaries, chunks still in use
        if entry.is_dir():
            found.extend(p for p in Path(entry.path).rglob("*") if p.is_file())
        else:
            found.append(Path(entry.path))
    return found
