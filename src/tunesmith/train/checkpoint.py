"""Resumable checkpoints.

Written as tunesmith.paths writes everything (temporary name, fsync, rename): a reader (or a
resumed run) sees a complete checkpoint or none, never half of one, even after SIGKILL or power
loss. A checkpoint is a torch.distributed.checkpoint folder (`.metadata` and one file per writing process)
plus the schedule, the trainer state and each process's RNG: the same format at every world size,
loadable at any other. Several machines need an out_dir they all see (a shared file system).
"""

from __future__ import annotations

import json
import random
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tunesmith.paths import publish_dir
from tunesmith.runfolder import checkpoint_path, list_checkpoints
from tunesmith.train.distributed import ONE_PROCESS, Dist, LossModule, unwrapped

KEEP_CHECKPOINTS = 2


# torch.distributed.checkpoint from here on: every process writes its own shard (under DDP, the
# replicated tensors once), and a checkpoint written by N processes loads on M, resharded.
# It is imported where used: 1.2 s of imports a run would otherwise pay before its first step.
_LOSS_PREFIX = "model."


def _options():
    """Not strict: the frozen base weights are neither saved nor loaded. The dict to load into is
    always built from the module itself, and dcp.load fails on any tensor the checkpoint lacks."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(ignore_frozen_params=True, strict=False)


def _dcp_io(operation: str, state: dict, path: Path) -> None:
    """dcp.save or dcp.load; without a process group, quietly in this one process."""
    import torch.distributed.checkpoint as dcp

    one_process = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        getattr(dcp, operation)(state, checkpoint_id=path, no_dist=one_process)


def _loss_module(module: torch.nn.Module) -> torch.nn.Module:
    """What state dicts are taken from: the trained (possibly wrapped) LossModule, or one made for a bare model."""
    return module if isinstance(unwrapped(module), LossModule) else LossModule(module, None)


def _model_state(module: torch.nn.Module) -> dict:
    """Trained tensors under the base checkpoint's own names (the LossModule's prefix dropped)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    loss_module = _loss_module(module)
    state = get_model_state_dict(loss_module, options=_options())
    # ignore_frozen_params finds frozen weights by name, and named_parameters() names a tied weight
    # once: its alias (a tied output layer under PEFT's trainable tokens, `lm_head.token_adapter.
    # base_layer.weight`) slips through, a whole frozen embedding (687 MB for Gemma 3) per checkpoint.
    frozen = {_storage(p) for p in loss_module.parameters() if not p.requires_grad} - {0}  # 0: an empty shard
    return {name.removeprefix(_LOSS_PREFIX): t for name, t in state.items() if _storage(t) not in frozen}


def _storage(tensor: torch.Tensor) -> int:
    return getattr(tensor, "_local_tensor", tensor).untyped_storage().data_ptr()


def _set_model_state(module: torch.nn.Module, state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    named = {_LOSS_PREFIX + name: tensor for name, tensor in state.items()}
    set_model_state_dict(_loss_module(module), named, options=_options())


def _save_sharded(target: Path, dist: Dist, state: dict, write_main: Callable[[Path], None]) -> Path:
    """Atomic across processes: all write into one temporary folder, then rank 0 renames it."""
    tmp = target.with_name(f".{target.name}.tmp")
    if dist.is_main:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a run killed while saving
        tmp.mkdir(parents=True)
    dist.barrier()
    _dcp_io("save", state, tmp)
    torch.save(rng_state(), tmp / f"rng-{dist.rank}.pt")
    if dist.is_main:
        write_main(tmp)
    dist.barrier()
    if dist.is_main:
        publish_dir(tmp, target)
    dist.barrier()  # nobody goes on (or reads it) before it is there
    return target


def save_best(path: Path, module: torch.nn.Module, step: int, val_loss: float, dist: Dist = ONE_PROCESS) -> None:
    """The lowest-validation-loss weights so far, as one atomically replaced folder."""
    meta = json.dumps({"step": step, "val_loss": val_loss})
    _save_sharded(path, dist, {"model": _model_state(module)}, lambda folder: (folder / "best.json").write_text(meta))


def load_best(path: str | Path, module: torch.nn.Module) -> None:
    """Into a trained LossModule (any world size) or a bare model built the same way."""
    state = _model_state(module)
    _dcp_io("load", {"model": state}, Path(path))
    _set_model_state(module, state)


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
    examples_per_step: int = 0  # all processes together: a resumed run must keep it
    world_size: int = 1


def save_checkpoint(
    ckpt_dir: Path, module, optimizer, scheduler, state: TrainerState, dist: Dist = ONE_PROCESS
) -> Path:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    _, optim_state = get_state_dict(_loss_module(module), optimizer, options=_options())

    def write_main(folder: Path) -> None:
        torch.save(scheduler.state_dict(), folder / "scheduler.pt")
        (folder / "state.json").write_text(json.dumps(state.__dict__, indent=1))

    target = checkpoint_path(ckpt_dir, state.step)
    path = _save_sharded(target, dist, {"model": _model_state(module), "optim": optim_state}, write_main)
    if dist.is_main:
        for old in list_checkpoints(ckpt_dir)[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(old)
    return path


def read_trainer_state(path: Path) -> TrainerState:
    return TrainerState(**json.loads((path / "state.json").read_text()))


def load_checkpoint(path: Path, module, optimizer, scheduler, dist: Dist = ONE_PROCESS) -> TrainerState:
    """Weights, optimizer and schedule, resharded to this world size; this rank's RNG where it had one."""
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_optimizer_state_dict

    loss_module = _loss_module(module)
    _, optim_state = get_state_dict(loss_module, optimizer, options=_options())  # allocates the state to load into
    state = {"model": _model_state(module), "optim": optim_state}
    _dcp_io("load", state, path)
    _set_model_state(module, state["model"])
    set_optimizer_state_dict(loss_module, optimizer, state["optim"], options=_options())
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    rng = path / f"rng-{dist.rank}.pt"
    if rng.is_file():
        set_rng_state(torch.load(rng, weights_only=False))
    return read_trainer_state(path)
