"""The run folder as a contract between the trainer and whoever reads its outputs.

Numbers in its JSON files are finite: NaN and infinities are written as null (JSON has no
spelling for them, and a reader that meets one fails on every later read).

A trainer holds an exclusive lock on ``.NAME.lock`` beside its ``out_dir`` NAME for its whole
life (the file names its process id), so two trainers can never write one folder: the second
refuses to start, and a supervisor can tell a live trainer from a folder that only looks like
one. The lock lives beside the folder, not in it, so taking it writes nothing into a folder that
the input checks may still refuse.
"""

from __future__ import annotations

import fcntl
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tunesmith.errors import TunesmithError


def lock_path(out_dir: Path) -> Path:
    return out_dir.parent / f".{out_dir.name}.lock"


@contextmanager
def locked(out_dir: Path) -> Iterator[None]:
    """Hold the run folder's lock; TunesmithError if another live process holds it."""
    out_dir = Path(out_dir).absolute()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path(out_dir), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise TunesmithError(f"{out_dir} is in use by another trainer (process {holder})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock; the kernel does the same when the process dies


def lock_holder(out_dir: Path) -> int | None:
    """The process id holding the folder's lock (0: not written yet), or None when no process holds it."""
    try:
        fd = os.open(lock_path(Path(out_dir).absolute()), os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            return int(text) if text.isdigit() else 0
        return None
    finally:
        os.close(fd)


def finite(value):
    """``value`` with NaN and infinities replaced by None, in nested dicts and lists too."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value
