"""The run folder as a contract between the trainer and whoever reads its outputs.

The trainer (decoder and encoder recipes), evaluation, the service and the service's test fake
trainer all name, write and read a run folder through this module:

- ``config.yaml``: the resolved config, written first.
- ``metrics.jsonl``: one JSON object per logged step (``step`` an int); appended as training goes,
  so a reader takes whole lines only; on resume the lines after the checkpoint are dropped. Its
  names are shared by decoder and encoder runs: ``{split}_{name}`` (``metric_name``), e.g.
  ``train_loss``, ``val_accuracy``.
- ``checkpoints/step-NNNNNN``: resumable checkpoints, each published by one rename;
  ``checkpoints/best``: the weights of the best validation loss so far.
- ``samples.json`` (decoder runs): held-out prompts answered before and after training.
- ``adapter/`` (LoRA runs), ``merged/`` (the model to load), ``classification_head.safetensors``
  (encoder classification runs), ``loss.png``.
- ``summary.json``: the run's summary, written last.

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
import json
import math
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from tunesmith.errors import TunesmithError
from tunesmith.paths import write_text_atomic

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CHECKPOINTS = "checkpoints"
CHECKPOINT_PREFIX = "step-"
BEST = "best"
SAMPLES = "samples.json"
ADAPTER = "adapter"
MERGED = "merged"
HEAD_FILE = "classification_head.safetensors"
LOSS_PLOT = "loss.png"
# Entries that say a folder holds a run (so it is not overwritten without --overwrite); a new run
# clears every entry the trainer writes.
RUN_MARKERS = (CONFIG, METRICS, CHECKPOINTS, ADAPTER, MERGED)
RUN_ENTRIES = (*RUN_MARKERS, SAMPLES, HEAD_FILE, LOSS_PLOT, SUMMARY)

# Metric names, the same for decoder and encoder runs: f"{split}_{name}" for split in TRAIN, VAL.
# Accuracy is the share of predictions that are right: label tokens (decoder, mlm), texts
# (classification) or queries whose positive ranks first (contrastive).
TRAIN, VAL = "train", "val"
LOSS, ACCURACY = "loss", "accuracy"


def metric_name(split: str, name: str) -> str:
    return f"{split}_{name}"


TRAIN_LOSS, TRAIN_ACCURACY = metric_name(TRAIN, LOSS), metric_name(TRAIN, ACCURACY)
VAL_LOSS, VAL_ACCURACY = metric_name(VAL, LOSS), metric_name(VAL, ACCURACY)
_CHECKPOINT_RE = re.compile(rf"{CHECKPOINT_PREFIX}(\d+)")


def best_checkpoint(out_dir: Path) -> Path:
    return out_dir / CHECKPOINTS / BEST


def lock_path(out_dir: Path) -> Path:
    return out_dir.parent / f".{out_dir.name}.lock"


def _lock(out_dir: Path) -> int:
    """An open descriptor holding the exclusive lock on the file now at `lock_path(out_dir)`.

    The holder deletes the file when done, so a lock taken on a file that was then deleted (or
    replaced) is worth nothing: such a file is let go and the path opened again."""
    path = lock_path(out_dir)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise TunesmithError(f"{out_dir} is in use by another trainer (process {holder})") from None
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


@contextmanager
def locked(out_dir: Path) -> Iterator[None]:
    """Hold the run folder's lock; TunesmithError if another live process holds it. The lock file
    is gone afterwards, whether the run finished or failed."""
    out_dir = Path(out_dir).absolute()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    fd = _lock(out_dir)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        lock_path(out_dir).unlink(missing_ok=True)  # while still locked: nobody else can hold this file
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


def checkpoint_path(ckpt_dir: Path, step: int) -> Path:
    return ckpt_dir / f"{CHECKPOINT_PREFIX}{step:06d}"


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    """The published checkpoints in ``ckpt_dir`` (``out_dir/checkpoints``), oldest first."""
    if not ckpt_dir.is_dir():
        return []
    return sorted(p for p in ckpt_dir.iterdir() if p.is_dir() and _CHECKPOINT_RE.fullmatch(p.name))


def checkpoint_steps(out_dir: Path) -> list[int]:
    return [int(_CHECKPOINT_RE.fullmatch(p.name).group(1)) for p in list_checkpoints(out_dir / CHECKPOINTS)]


class MetricsLog:
    """Append-only ``metrics.jsonl``; on resume, lines from after the checkpoint are dropped first.

    `trackers` (tunesmith.trackers: TensorBoard, MLflow) get every line too; `close()` after the
    run's last file is written lets them finish (MLflow uploads the run folder then).
    """

    def __init__(self, path: Path, resume_step: int | None, trackers: Sequence = ()):
        self.path = path
        if resume_step is not None and path.exists():
            kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= resume_step]
            write_text_atomic(path, "".join(line + "\n" for line in kept))
        self.trackers = list(trackers)

    def write(self, record: dict) -> None:
        with open(self.path, "a") as fh:
            fh.write(json.dumps(finite(record), allow_nan=False) + "\n")
        for tracker in self.trackers:
            tracker.log(record)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close(self.path.parent)


def parse_metrics(text: str) -> list[dict]:
    """The metrics lines of ``text`` (a whole file or an appended piece): objects with an int step;
    a line half-written by a live trainer, or otherwise unreadable, is skipped."""
    rows = []
    for line in text.splitlines():
        try:
            row = json.loads(line, parse_constant=lambda _: None)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append(row)
    return rows


def read_metrics(out_dir: Path) -> list[dict]:
    path = out_dir / METRICS
    return parse_metrics(path.read_text(encoding="utf-8", errors="replace")) if path.is_file() else []


def write_summary(out_dir: Path, summary: dict) -> None:
    write_text_atomic(out_dir / SUMMARY, json.dumps(finite(summary), indent=1))


def read_summary(out_dir: Path) -> dict | None:
    """The run's summary.json, or None when the run has not finished (or predates it)."""
    path = out_dir / SUMMARY
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise TunesmithError(f"{path}: not valid JSON: {error}") from None
