"""Write a new output (dataset folder, PNG, mp4) all-or-nothing: into a staging path, renamed into place on success.

Every tool that writes a new file or dataset (merge, filter, render, the importers) goes through here, so a
failure never leaves a half-written output, and an existing non-empty output is refused before anything is read.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator

from robo.data.schema import DatasetError


def refuse_existing(output: Path) -> None:
    """Raise if ``output`` holds anything: tools never overwrite."""
    if output.is_dir() and any(output.iterdir()):
        raise DatasetError(f"{output} already exists and is not empty; choose a new output path")
    if output.exists() and not output.is_dir():
        raise DatasetError(f"{output} already exists; choose a new output path")


@contextlib.contextmanager
def staged_output(output: Path) -> Iterator[Path]:
    """Yield a fresh staging path next to ``output``; move it to ``output`` only if the block succeeds."""
    output = Path(output)
    refuse_existing(output)
    if not output.parent.exists():
        raise DatasetError(f"folder {output.parent} does not exist; create it first")
    staging = output.parent / f".{output.name}.{os.getpid()}.partial"
    if staging.exists():
        shutil.rmtree(staging) if staging.is_dir() else staging.unlink()
    try:
        yield staging
        if output.is_dir():
            output.rmdir()  # empty (checked above); rename needs it gone for files, tolerates it for folders
        os.replace(staging, output)
    finally:
        if staging.exists():
            shutil.rmtree(staging) if staging.is_dir() else staging.unlink()
