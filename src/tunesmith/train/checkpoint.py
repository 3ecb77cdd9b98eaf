"""Atomic files and resumable checkpoints.

Everything is written to a temporary name, fsynced, then renamed: a reader (or a resumed run)
sees a complete checkpoint or none, never half of one, even after SIGKILL or power loss.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save, save_file

CHECKPOINT_PREFIX = "step-"
KEEP_CHECKPOINTS = 2


def _fsync_dir(path: Path) -> None:
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
        _fsync_dir(path.parent)
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


def write_dir_atomic(target: str | Path, fill: Callable[[Path], None]) -> Path:
    """Fill a temp folder, fsync its files, then rename it to `target` (replacing an old one)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        fill(tmp)
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
        _fsync_dir(target.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in state]
    if missing or any(n not in params for n in state):
        raise ValueError(f"checkpoint does not fit this model ({len(missing)} trainable tensors missing)")
    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(tensor)


def save_best(path: Path, model: torch.nn.Module, step: int, val_loss: float) -> None:
    """The lowest-validation-loss weights so far, as one atomically replaced file."""
    state = trainable_state(model)
    with atomic_file(path) as fh:
        fh.write(save(state, metadata={"step": str(step), "val_loss": repr(val_loss)}))


def load_best(path: Path, model: torch.nn.Module) -> None:
    load_trainable_state(model, load_file(path))


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


@dataclass
class TrainerState:
    """What, beside weights and optimizer, makes a resumed run continue exactly."""

    step: int
    trained_tokens: int
    best_val_loss: float | None
    best_step: int | None
    evals_without_improvement: int
    wall_seconds: float


def save_checkpoint(ckpt_dir: Path, model, optimizer, scheduler, state: TrainerState) -> Path:
    def fill(folder: Path) -> None:
        save_file(trainable_state(model), folder / "trainable.safetensors")
        torch.save(
            {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state()},
            folder / "optimizer.pt",
        )
        (folder / "state.json").write_text(json.dumps(state.__dict__, indent=1))

    path = write_dir_atomic(ckpt_dir / f"{CHECKPOINT_PREFIX}{state.step:06d}", fill)
    for old in list_checkpoints(ckpt_dir)[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old)
    return path


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    if not ckpt_dir.is_dir():
        return []
    return sorted(p for p in ckpt_dir.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX))


def load_checkpoint(path: Path, model, optimizer, scheduler) -> TrainerState:
    load_trainable_state(model, load_file(path / "trainable.safetensors"))
    extra = torch.load(path / "optimizer.pt", weights_only=False)
    optimizer.load_state_dict(extra["optimizer"])
    scheduler.load_state_dict(extra["scheduler"])
    set_rng_state(extra["rng"])
    return TrainerState(**json.loads((path / "state.json").read_text()))
