"""The steps every training run shares, whatever it trains (decoder: train/recipe.py; encoder:
encoders/recipe.py): the run folder opened or resumed, the optimizer step, evaluation with early
stopping and the best weights, checkpoints, and the plot and summary at the end.

A recipe owns its setup, what a step computes and the metrics of its training window; it calls a
`TrainingRun` around its loop.

Whoever starts a run may watch its evaluations (`on_validation`): called with the step and the
val_* metrics after each one, it returns why the run should stop now, or None to go on. A
hyperparameter search stops hopeless trials this way (tune/objective.py) without the loop knowing
who asks.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from tunesmith.config import Config, dump_config
from tunesmith.errors import TunesmithError
from tunesmith.export import plot_losses
from tunesmith.paths import write_text_atomic
from tunesmith.runfolder import (
    CHECKPOINTS,
    CONFIG,
    LOSS_PLOT,
    METRICS,
    RUN_ENTRIES,
    RUN_MARKERS,
    VAL_LOSS,
    MetricsLog,
    best_checkpoint,
    list_checkpoints,
    read_metrics,
    write_summary,
)
from tunesmith.trackers import open_trackers
from tunesmith.train.checkpoint import TrainerState, load_best, load_checkpoint, save_best, save_checkpoint
from tunesmith.train.distributed import ONE_PROCESS, Dist
from tunesmith.train.optim import build_optimizer, build_scheduler
from tunesmith.train.stopping import EarlyStopping, stop_if_diverged

# (step, val_* metrics) -> the reason to stop the run now, or None. It must answer the same on every
# process of a distributed run, as early stopping does.
ValidationObserver = Callable[[int, dict], "str | None"]


@dataclass
class RunSummary:
    out_dir: str
    steps: int
    trained_tokens: int
    best_step: int | None
    best_val_loss: float | None
    initial_val_loss: float | None
    wall_seconds: float
    stopped_early: bool
    fast_paths_used: dict | None = None  # kernels/ on this model, or why each stepped aside (train/fast_paths.py)


def check_out_dir(out_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to mix two runs in one folder; called before anything is written."""
    holds_run = out_dir.is_dir() and any((out_dir / m).exists() for m in RUN_MARKERS)
    if resume:
        if not list_checkpoints(out_dir / CHECKPOINTS):
            raise TunesmithError(f"--resume: {out_dir} has no checkpoint to resume from")
    elif holds_run and not overwrite:
        raise TunesmithError(f"{out_dir} already holds a run; pass --overwrite to replace it or --resume")
    if out_dir.exists() and not out_dir.is_dir():
        raise TunesmithError(f"out_dir {out_dir} exists and is not a folder")


def _start_folder(out_dir: Path, cfg: Config) -> None:
    """A new run: the previous run's entries cleared (check_out_dir allowed it), config.yaml written."""
    if out_dir.exists():
        for entry in RUN_ENTRIES:
            target = out_dir / entry
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / CONFIG, dump_config(cfg))


class TrainingRun:
    """One run of `total_steps` optimizer steps of `params` (of `module`) into ``cfg.out_dir``.

    Opening it starts the folder (or, resuming, loads the last checkpoint into module, optimizer
    and schedule); rank 0 alone writes files, every process takes the same decisions.
    """

    def __init__(
        self,
        cfg: Config,
        module: torch.nn.Module,
        params: list[torch.nn.Parameter],
        steps_per_epoch: int,
        total_steps: int,
        resume: bool,
        dist: Dist = ONE_PROCESS,
        on_validation: ValidationObserver | None = None,
    ):
        self.cfg, self.module, self.params, self.dist = cfg, module, params, dist
        self.on_validation = on_validation
        self.steps_per_epoch, self.total_steps = steps_per_epoch, total_steps
        self.out_dir = Path(cfg.out_dir)
        self.optimizer = build_optimizer(params, cfg.train)
        self.scheduler = build_scheduler(self.optimizer, cfg.train, total_steps)
        stopping = cfg.train.early_stopping
        self.stopper = EarlyStopping(stopping.patience if stopping else None, stopping.min_delta if stopping else 0.0)
        self.stopped_early = False
        if resume:
            checkpoint = list_checkpoints(self.out_dir / CHECKPOINTS)[-1]
            self.state = load_checkpoint(checkpoint, module, self.optimizer, self.scheduler, dist)
            self.stopper.best_loss, self.stopper.best_step = self.state.best_val_loss, self.state.best_step
            self.stopper.evals_without_improvement = self.state.evals_without_improvement
        else:
            if dist.is_main:
                _start_folder(self.out_dir, cfg)
            self.state = TrainerState(0, 0, None, None, 0, 0.0)
        resume_step = self.state.step if resume else None
        self.metrics = (
            MetricsLog(
                self.out_dir / METRICS, resume_step, open_trackers(cfg.train.report_to, self.out_dir, resume_step)
            )
            if dist.is_main
            else None
        )
        self.started = time.perf_counter() - self.state.wall_seconds

    def log(self, record: dict) -> None:
        """One metrics line, after ``train.nan_policy`` had its say. Every process checks the line
        (they all hold the same reduced numbers), so a diverged run stops on all of them at once."""
        stop_if_diverged(record, self.cfg.train.nan_policy)
        if self.metrics is not None:
            self.metrics.write(record)

    def record(self, step: int) -> dict:
        return {"step": step, "epoch": round(step / self.steps_per_epoch, 4)}

    def logs_at(self, step: int) -> bool:
        return step % self.cfg.train.log_every == 0 or step == self.total_steps

    def optimizer_step(self) -> tuple[torch.Tensor, float]:
        """Clip (train.max_grad_norm), step, schedule; (the gradient norm before clipping, the lr used)."""
        params, max_norm = self.params, self.cfg.train.max_grad_norm
        grad_norm = (
            torch.nn.utils.clip_grad_norm_(params, max_norm)
            if max_norm
            else torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        )
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm, lr

    def end_step(self, step: int, record: dict | None, validate: Callable[[], dict], progress) -> bool:
        """After a step's optimizer step: evaluate when due (`validate` returns the val_* metrics; a new
        best is saved), write the metrics line, checkpoint when due. True when early stopping or the
        observer (`on_validation`) ends the run."""
        cfg, state, stopper = self.cfg.train, self.state, self.stopper
        state.step = step
        stop_reason = None
        if step % cfg.eval_every == 0 or step % self.steps_per_epoch == 0 or step == self.total_steps:
            validation = validate()
            record = {**(record or self.record(step)), **validation}
            improved = stopper.update(step, validation[VAL_LOSS])
            if improved:
                save_best(best_checkpoint(self.out_dir), self.module, step, validation[VAL_LOSS], self.dist)
            progress.say(
                f"step {step}: "
                + "  ".join(f"{k} {v:.4f}" for k, v in validation.items())
                + ("  (best)" if improved else "")
            )
            stop_reason = self.on_validation(step, validation) if self.on_validation else None
            self.stopped_early = stopper.should_stop or stop_reason is not None
        if record is not None:
            self.log(record)
        state.best_val_loss, state.best_step = stopper.best_loss, stopper.best_step
        state.evals_without_improvement = stopper.evals_without_improvement
        state.wall_seconds = time.perf_counter() - self.started
        if step % cfg.save_every == 0 and step != self.total_steps and not self.stopped_early:
            save_checkpoint(self.out_dir / CHECKPOINTS, self.module, self.optimizer, self.scheduler, state, self.dist)
            progress.say(f"step {step}: checkpoint saved")
        if stop_reason is not None:
            progress.say(f"stopping at step {step}: {stop_reason}")
        elif self.stopped_early:
            progress.say(
                f"early stopping at step {step}: no improvement in {stopper.evals_without_improvement} evaluations"
            )
        return self.stopped_early

    def restore_best(self) -> None:
        """The best weights, not the last, into the module (on every process: the answer is the same
        on all of them, unlike a look at the disk)."""
        if self.stopper.best_step is not None:
            load_best(best_checkpoint(self.out_dir), self.module)

    def finish(self, fast_paths_used: dict | None = None) -> RunSummary:
        """The loss plot and summary.json (rank 0), after the recipe saved its weights."""
        history = read_metrics(self.out_dir) if self.dist.is_main else []
        val_losses = [m[VAL_LOSS] for m in history if VAL_LOSS in m]
        summary = RunSummary(
            out_dir=str(self.out_dir),
            steps=self.state.step,
            trained_tokens=self.state.trained_tokens,
            best_step=self.stopper.best_step,
            best_val_loss=self.stopper.best_loss,
            initial_val_loss=val_losses[0] if val_losses else None,
            wall_seconds=round(time.perf_counter() - self.started, 2),
            stopped_early=self.stopped_early,
            fast_paths_used=fast_paths_used,
        )
        if self.metrics is not None:
            plot_losses(history, self.out_dir / LOSS_PLOT)
            write_summary(self.out_dir, summary.__dict__)
            self.metrics.close()
        return summary
