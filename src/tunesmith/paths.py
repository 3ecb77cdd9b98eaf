"""Where tunesmith keeps its files, and the one way it writes them: atomically.

Every file and folder is written under a temporary name beside its target, fsynced, then renamed
over it: a reader sees the old content or the new, never half of one, even after SIGKILL or power
loss.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path


def tunesmith_home() -> Path:
    return Path(os.environ.get("TUNESMITH_HOME", Path.home() / ".cache" / "tunesmith"))


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path):
    """A temp path beside `path` for a writer that opens files itself; on success it is fsynced and
    renamed over `path`, on failure removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_file(path: str | Path, mode: str = "wb"):
    """Open a temp file beside `path`; on success fsync it and rename it over `path`."""
    with atomic_path(path) as tmp, open(tmp, mode) as fh:
        yield fh


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_file(path, "w") as fh:
        fh.write(text)


def publish_dir(tmp: Path, target: Path) -> Path:
    """fsync the files of a filled folder, then rename it to `target` (replacing an old one)."""
    for f in tmp.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old)
    else:
        tmp.rename(target)
    fsync_dir(target.parent)
    return target


def write_dir_atomic(target: str | Path, fill: Callable[[Path], None], replace: bool = True) -> Path:
    """Fill a temp folder, fsync its files, then rename it to `target`. An old `target` is
    replaced, or with ``replace=False`` kept (a cache another process filled first: as good as ours)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        fill(tmp)
        if replace or not target.exists():
            publish_dir(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
