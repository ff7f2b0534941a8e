"""Safe output: OUTPUT_DIR is checked before any slow work, locked against a concurrent export,
built in a hidden staging sibling and renamed into place at the end, so a failed, interrupted or
concurrent export never leaves a partial folder and `--force` never deletes what it should not."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from ortgen.errors import ExportError
from ortgen.manifest import MANIFEST_NAME

_LOCK_TRIES = 10  # the lock file can be replaced under us (a finished export unlinks it): retry


def refuse_existing(output_dir: Path, force: bool, source: Path | None = None) -> None:
    """Refuse an OUTPUT_DIR that is (inside or a parent of) the source, and an existing one unless
    `force` and it is an ortgen model folder or empty: nothing else is ever replaced."""
    if source is not None and _overlaps(output_dir, source):
        raise ExportError(
            f"{output_dir} is or contains the source checkpoint {source}: "
            "choose an OUTPUT_DIR outside it"
        )
    if not output_dir.exists():
        return
    if not output_dir.is_dir():
        raise ExportError(f"{output_dir} exists and is not a folder: choose another OUTPUT_DIR")
    if not force:
        raise ExportError(f"{output_dir} already exists: pass --force to replace it")
    if not (output_dir / MANIFEST_NAME).is_file() and any(output_dir.iterdir()):
        raise ExportError(
            f"{output_dir} is not an ortgen model folder (no {MANIFEST_NAME}) and not empty: "
            "--force replaces only those; choose another OUTPUT_DIR or empty it yourself"
        )


def _overlaps(output_dir: Path, source: Path) -> bool:
    out, src = output_dir.resolve(), source.resolve()
    return out == src or out in src.parents


@contextlib.contextmanager
def export_lock(output_dir: Path) -> Iterator[None]:
    """Hold `.NAME.lock` beside OUTPUT_DIR for the whole export; creating it also proves the
    parent is writable before any slow work. Stale staging folders (from killed exports) are
    removed once the lock is held: no live export can own them then."""
    parent = _make_parent(output_dir.parent)
    lock_path = parent / f".{output_dir.name}.lock"
    handle = _acquire(lock_path, output_dir)
    try:
        _remove_stale(output_dir)
        yield
    finally:
        lock_path.unlink(missing_ok=True)  # still held: a waiting export re-opens a fresh file
        handle.close()


def _make_parent(parent: Path) -> Path:
    try:
        parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as err:
        raise ExportError(
            f"cannot write to {parent} ({err.strerror}): choose a writable OUTPUT_DIR"
        ) from None
    return parent


def _acquire(lock_path: Path, output_dir: Path):
    for _ in range(_LOCK_TRIES):
        handle = open(lock_path, "a+")  # noqa: SIM115 - held until the export ends
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise ExportError(
                f"another export to {output_dir} is running (it holds {lock_path}): "
                "wait for it to finish or choose another OUTPUT_DIR"
            ) from None
        # The holder before us unlinks the file on exit: our lock must be on the current one.
        if lock_path.exists() and os.path.samestat(os.fstat(handle.fileno()), lock_path.stat()):
            return handle
        handle.close()
    raise ExportError(f"cannot lock {lock_path}: exports to {output_dir} keep racing; retry")


def _remove_stale(output_dir: Path) -> None:
    for pattern in (f".{output_dir.name}.partial-*", f".{output_dir.name}.old-*"):
        for stale in output_dir.parent.glob(pattern):
            shutil.rmtree(stale, ignore_errors=True)


@contextlib.contextmanager
def interrupt_on_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP raise KeyboardInterrupt (as Ctrl-C does), so `finally` blocks remove
    the staging folder and the lock; the previous handlers come back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield  # handlers can only be installed from the main thread
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def staged_folder(output_dir: Path, force: bool) -> Iterator[Path]:
    """Yield an empty staging folder; on success it replaces `output_dir`, on any failure
    (exceptions, Ctrl-C, SIGTERM) it is deleted and `output_dir` is untouched."""
    refuse_existing(output_dir, force)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.partial-", dir=output_dir.parent))
    try:
        staging.chmod(0o777 & ~umask())  # mkdtemp makes 0700; the result follows the umask
        yield staging
        _replace(staging, output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def umask() -> int:
    """The process' file-creation mask (reading it means setting it: set back at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _replace(staging: Path, output_dir: Path) -> None:
    if not output_dir.exists():
        staging.rename(output_dir)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.old-", dir=output_dir.parent))
    old.rmdir()
    output_dir.rename(old)  # two renames: the window without output_dir is a few syscalls
    staging.rename(output_dir)
    shutil.rmtree(old, ignore_errors=True)
