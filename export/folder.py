"""Atomic output: the model folder is built in a hidden temporary sibling and renamed into place at
the end, so a failed or interrupted export never leaves a partial OUTPUT_DIR."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ortgen.errors import ExportError


def refuse_existing(output_dir: Path, force: bool) -> None:
    if output_dir.exists() and not force:
        raise ExportError(f"{output_dir} already exists: pass --force to replace it")
    if output_dir.exists() and not output_dir.is_dir():
        raise ExportError(f"{output_dir} exists and is not a folder: choose another OUTPUT_DIR")


@contextlib.contextmanager
def staged_folder(output_dir: Path, force: bool) -> Iterator[Path]:
    """Yield an empty staging folder; on success it replaces `output_dir`, on any failure
    (exceptions, Ctrl-C) it is deleted and `output_dir` is untouched."""
    refuse_existing(output_dir, force)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.partial-", dir=output_dir.parent))
    try:
        yield staging
        _replace(staging, output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _replace(staging: Path, output_dir: Path) -> None:
    if not output_dir.exists():
        staging.rename(output_dir)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.old-", dir=output_dir.parent))
    old.rmdir()
    output_dir.rename(old)  # two renames: the window without output_dir is a few syscalls
    staging.rename(output_dir)
    shutil.rmtree(old, ignore_errors=True)
