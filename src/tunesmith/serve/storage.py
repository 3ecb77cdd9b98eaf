"""Disk use of the service: per-organisation quotas on uploads, a free-space floor, and retention.

An upload reserves its organisation's file slot before its body is read and its bytes, a block at a
time, while they arrive: concurrent uploads of one organisation cannot together pass its quota, and a
refused upload is removed as it is refused. Under ``min_free`` bytes free on the home's disk, new
uploads and jobs are refused (507) before SQLite or a trainer runs out of space for everyone.
``collect_garbage`` frees what retention allows: the run folders of failed and cancelled jobs and
cached GGUF exports older than ``keep_seconds``.
"""

from __future__ import annotations

import errno
import re
import shutil
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tunesmith.serve.errors import APIError, too_many
from tunesmith.serve.store import Store

BLOCK = 1024 * 1024  # bytes reserved at a time while an upload arrives
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}


def disk_full(error: BaseException) -> bool:
    """Whether ``error`` is the disk running out of space (a write, or SQLite's own message)."""
    if isinstance(error, OSError):
        return error.errno in _DISK_FULL
    return isinstance(error, sqlite3.OperationalError) and "disk is full" in str(error)


def insufficient_storage(detail: str) -> APIError:
    return APIError(507, f"the server is low on disk space: {detail}; try again later", code="insufficient_storage")


@dataclass
class Reservation:
    storage: Storage
    org_id: str
    received: int = 0  # bytes of the file so far
    reserved: int = 0  # bytes held for it (received rounded up to a block)

    def grow(self, n: int) -> None:
        """Account ``n`` more bytes of the file; 413 past the organisation's quota, 507 past the floor."""
        self.received += n
        if self.received > self.reserved:
            self.storage._reserve_bytes(self, max(BLOCK, self.received - self.reserved))


class Storage:
    def __init__(self, store: Store, quota_bytes: int | None, max_files: int | None, min_free: int):
        self.store, self.quota_bytes, self.max_files, self.min_free = store, quota_bytes, max_files, min_free
        self._lock = threading.Lock()
        self._bytes: dict[str, int] = {}  # organisation -> bytes reserved by its uploads in progress
        self._files: dict[str, int] = {}  # organisation -> its uploads in progress

    def check_free(self) -> None:
        """507 when the home's disk has less than ``min_free`` bytes free."""
        if self.min_free and shutil.disk_usage(self.store.home).free < self.min_free:
            raise insufficient_storage(f"less than {self.min_free} bytes free")

    @contextmanager
    def reserve(self, org_id: str):
        """A file slot for one upload of ``org_id`` (429 over ``max_files``), released on exit; the
        caller registers the file before leaving, so it is counted once in the database or here."""
        self.check_free()
        with self._lock:
            if self.max_files is not None:
                stored, _ = self.store.org_usage(org_id)
                if stored + self._files.get(org_id, 0) >= self.max_files:
                    raise too_many(
                        f"your organisation has {self.max_files} files, its limit: delete some first", retry_after=60
                    )
            self._files[org_id] = self._files.get(org_id, 0) + 1
        reservation = Reservation(self, org_id)
        try:
            yield reservation
        finally:
            with self._lock:
                self._files[org_id] -= 1
                self._bytes[org_id] = self._bytes.get(org_id, 0) - reservation.reserved

    def _reserve_bytes(self, reservation: Reservation, n: int) -> None:
        self.check_free()
        org_id = reservation.org_id
        with self._lock:
            if self.quota_bytes is not None:
                _, used = self.store.org_usage(org_id)
                held = self._bytes.get(org_id, 0)
                if used + held - reservation.reserved + reservation.received > self.quota_bytes:
                    raise APIError(
                        413,
                        f"your organisation's storage quota is {self.quota_bytes} bytes: {used} are stored and "
                        f"{held} reserved by uploads in progress; delete files first",
                        param="file",
                        code="storage_quota_exceeded",
                    )
            # Others' reservations count whole blocks: at most a block per upload more than they hold.
            self._bytes[org_id] = self._bytes.get(org_id, 0) + n
            reservation.reserved += n


def parse_duration(text: str) -> float:
    """Seconds in ``7d``, ``12h``, ``30m``, ``90s`` (a bare number is days)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([dhms]?)\s*", text)
    if not match:
        raise ValueError(f"{text!r} is not a duration: write e.g. 7d, 12h, 30m or 90s")
    return float(match.group(1)) * {"d": 86400, "h": 3600, "m": 60, "s": 1, "": 86400}[match.group(2)]


def collect_garbage(store: Store, keep_seconds: float, now: float | None = None) -> list[tuple[Path, int]]:
    """Remove the run folders of failed and cancelled jobs that finished over ``keep_seconds`` ago,
    and cached GGUF exports written over ``keep_seconds`` ago; each path removed with its bytes."""
    cutoff = (time.time() if now is None else now) - keep_seconds
    removed = []
    for job in store.jobs_with_status("failed", "cancelled"):
        run = Path(job["run_dir"])
        if (job["finished_at"] or 0) < cutoff and run.is_dir():
            removed.append((run, _size(run)))
            shutil.rmtree(run, ignore_errors=True)
    for export in store.runs_dir.glob("*/out/export/*.gguf"):
        try:
            stat = export.stat()
        except OSError:
            continue
        if stat.st_mtime < cutoff:
            export.unlink(missing_ok=True)
            removed.append((export, stat.st_size))
    return removed


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())
