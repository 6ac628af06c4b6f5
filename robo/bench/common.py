"""Shared benchmark plumbing: a fixed-width table, then one JSON line of the figures (always last)."""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from typing import Iterator


def print_table(title: str, rows: list[tuple[str, ...]],
                headers: tuple[str, ...] = ("measure", "value", "baseline / note")) -> None:
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    print(title)
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))


def print_json_line(figures: dict) -> None:
    print(json.dumps(figures, sort_keys=True))


@contextmanager
def one_core() -> Iterator[int]:
    """Pin this process to a single core (and Blosc to one thread) for the duration; yields the core id."""
    import numcodecs.blosc

    before = os.sched_getaffinity(0)
    core = min(before)
    threads = numcodecs.blosc.get_nthreads()
    os.sched_setaffinity(0, {core})
    numcodecs.blosc.set_nthreads(1)
    try:
        yield core
    finally:
        os.sched_setaffinity(0, before)
        numcodecs.blosc.set_nthreads(threads)
