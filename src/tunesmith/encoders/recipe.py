"""The encoder recipe: setup, one visible training loop, save; `mlm`, `contrastive` or `classification`.

Same conventions as the decoder recipe (train/recipe.py) and the same helpers: optimizer and
schedule, early stopping on validation loss, atomic resumable checkpoints, the best weights exported
rather than the last, progress on stderr and metrics.jsonl. What differs is only the task
(encoders/tasks.py): its examples, its head and its loss.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import torch

from tunesmith.config import Config, dump_config
from tunesmith.data.batching import epoch_order
from tunesmith.encoders.export import save_encoder
from tunesmith.encoders.model import Encoder, load_encoder, set_dropout
from tunesmith.encoders.tasks import ClassificationTask, ContrastiveTask, MaskedLMTask
from tunesmith.errors import TunesmithError
from tunesmith.export import plot_losses
from tunesmith.paths import atomic_file, write_dir_atomic, write_text_atomic
from tunesmith.precision import autocast, default_device
from tunesmith.progress import TrainProgress, peak_rss_mb
from tunesmith.runfolder import METRICS, MetricsLog, list_checkpoints, read_metrics, write_summary
from tunesmith.train.checkpoint import (
    TrainerState,
    load_best,
    load_checkpoint,
    save_best,
    save_checkpoint,
)
from tunesmith.train.optim import build_optimizer, build_scheduler
from tunesmith.train.recipe import RUN_MARKERS, RunSummary, attach_method, check_out_dir, write_metrics
from tunesmith.train.stopping import EarlyStopping

ENCODER_OBJECTIVES = ("mlm", "contrastive", "classification")
HEAD_FILE = "classification_head.safetensors"


def is_encoder_run(cfg: Config) -> bool:
    return cfg.method.objective in ENCODER_OBJECTIVES


def _build_task(cfg: Config, encoder: Encoder):
    if cfg.method.objective == "contrastive":
        return ContrastiveTask(cfg, encoder)
    if cfg.method.objective == "classification":
        return ClassificationTask(cfg, encoder)
    from transformers import AutoModelForMaskedLM

    # A sentence-embedding checkpoint has no MLM head: transformers ties the head's output matrix
    # to the word embeddings and initialises its small transform, which then trains in full.
    mlm_model = AutoModelForMaskedLM.from_pretrained(encoder.path, dtype=torch.float32)
    encoder.model = mlm_model.base_model
    return MaskedLMTask(cfg, encoder, mlm_model)


def _train_head(head: torch.nn.Module, body: torch.nn.Module) -> None:
    """A head trains in full, except weights it shares with the body (the MLM head's tied embeddings),
    which follow the method: frozen under LoRA."""
    shared = {id(p) for p in body.parameters()}
    for p in head.parameters():
        if id(p) not in shared:
            p.requires_grad_(True)


def _generator(seed: int, step: int, micro: int) -> torch.Generator:
    # Masking is a pure function of (seed, step, micro-batch), like the data order: resume is exact.
    return torch.Generator().manual_seed(seed * 1_000_003 + step * 1_009 + micro)


@torch.no_grad()
def evaluate_loss(task, body, cfg: Config, device) -> tuple[float, float]:
    """Validation loss per loss term and accuracy (masked tokens or texts; 0 for contrastive)."""
    body.eval()
    total, correct, count = 0.0, 0, 0
    size = cfg.train.batch_size
    for start in range(0, len(task.validation), size):
        prepared = task.prepare(task.validation[start : start + size], _generator(cfg.train.seed, 0, start))
        with autocast(cfg.train.dtype, device):
            loss, right = task.loss_sum(body, prepared.inputs)
        total += float(loss)
        correct += right
        count += prepared.count
    body.train()
    return total / max(count, 1), correct / max(count, 1)


def train_encoder(cfg: Config, resume: bool = False, overwrite: bool = False) -> RunSummary:
    out_dir = Path(cfg.out_dir)
    check_out_dir(out_dir, resume, overwrite)

    # ---- setup: everything that can fail on bad input happens before out_dir is touched ----
    encoder = load_encoder(cfg.model, cfg.encoder.max_seq_len)
    task = _build_task(cfg, encoder)
    if cfg.encoder.dropout is not None:
        set_dropout(encoder.model, cfg.encoder.dropout)
    if not task.validation:
        raise TunesmithError("no validation data: give data.validation or a data.val_fraction > 0")
    per_step = cfg.train.batch_size * cfg.train.grad_accum
    steps_per_epoch = math.ceil(len(task.train) / per_step)
    total_steps = cfg.train.max_steps or max(1, math.ceil(cfg.train.epochs * steps_per_epoch))

    device = default_device()
    torch.manual_seed(cfg.train.seed)
    body = attach_method(encoder.model, cfg, "FEATURE_EXTRACTION").to(device)
    head = task.head.to(device)
    _train_head(head, body)
    # One module holds everything trained, so checkpoints and the best weights cover the head too.
    trained = torch.nn.ModuleDict({"body": body, "head": head})
    body.train()
    params = [p for p in trained.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, cfg.train)
    scheduler = build_scheduler(optimizer, cfg.train, total_steps)
    stopper = EarlyStopping(
        cfg.train.early_stopping.patience if cfg.train.early_stopping else None,
        cfg.train.early_stopping.min_delta if cfg.train.early_stopping else 0.0,
    )
    ckpt_dir, best_path = out_dir / "checkpoints", out_dir / "checkpoints" / "best.safetensors"

    if resume:
        state = load_checkpoint(list_checkpoints(ckpt_dir)[-1], trained, optimizer, scheduler)
        stopper.best_loss, stopper.best_step = state.best_val_loss, state.best_step
        stopper.evals_without_improvement = state.evals_without_improvement
        metrics = MetricsLog(out_dir / METRICS, resume_step=state.step, report_to=cfg.train.report_to)
    else:
        if out_dir.exists():
            for marker in (*RUN_MARKERS, "loss.png", "summary.json", HEAD_FILE):
                target = out_dir / marker
                shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out_dir / "config.yaml", dump_config(cfg))
        state = TrainerState(0, 0, None, None, 0, 0.0)
        metrics = MetricsLog(out_dir / METRICS, resume_step=None, report_to=cfg.train.report_to)
        val_loss, val_acc = evaluate_loss(task, body, cfg, device)
        record = {"step": 0, "epoch": 0.0, "val_loss": val_loss, "val_accuracy": val_acc}
        write_metrics(metrics, record, cfg.train.nan_policy)

    # ---- the loop ----
    started = time.perf_counter() - state.wall_seconds
    lengths = [0] * len(task.train)  # the order is not length-grouped: varied batches make better negatives
    window = {"loss": 0.0, "count": 0, "correct": 0, "examples": 0, "tokens": 0, "seconds": 0.0}
    stopped_early = False
    with TrainProgress(total_steps, state.step) as progress:
        progress.say(task.summary())
        progress.say(
            f"training {cfg.model} ({cfg.method.objective}, {cfg.method.name}) for {total_steps} steps, "
            f"{steps_per_epoch} steps/epoch"
        )
        for step in range(state.step + 1, total_steps + 1):
            step_start = time.perf_counter()
            epoch, index = divmod(step - 1, steps_per_epoch)
            chosen = epoch_order(lengths, per_step, cfg.train.seed, epoch, False)[
                index * per_step : (index + 1) * per_step
            ]
            size = cfg.train.batch_size
            prepared = [
                task.prepare([task.train[i] for i in chosen[j : j + size]], _generator(cfg.train.seed, step, j))
                for j in range(0, len(chosen), size)
            ]
            # Normalise by the loss terms of the whole step (queries, masked tokens or texts), so each
            # weighs the same however they fall into micro-batches. A contrastive micro-batch's
            # negatives are its own documents: grad_accum does not enlarge them.
            step_count = sum(p.count for p in prepared)
            for batch in prepared:
                with autocast(cfg.train.dtype, device):
                    loss, correct = task.loss_sum(body, batch.inputs)
                (loss / max(step_count, 1)).backward()
                window["loss"] += float(loss.detach())
                window["correct"] += correct
                window["tokens"] += batch.tokens
            window["count"] += step_count
            window["examples"] += len(chosen)
            state.trained_tokens += sum(p.tokens for p in prepared)
            grad_norm = (
                torch.nn.utils.clip_grad_norm_(params, cfg.train.max_grad_norm)
                if cfg.train.max_grad_norm
                else torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
            )
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.step = step
            window["seconds"] += time.perf_counter() - step_start

            record = None
            if step % cfg.train.log_every == 0 or step == total_steps:
                seconds = max(window["seconds"], 1e-9)
                record = {
                    "step": step,
                    "epoch": round(step / steps_per_epoch, 4),
                    "train_loss": window["loss"] / max(window["count"], 1),
                    "train_accuracy": window["correct"] / max(window["count"], 1),
                    "lr": lr,
                    "examples_per_second": window["examples"] / seconds,
                    "tokens_per_second": window["tokens"] / seconds,
                    "grad_norm": float(grad_norm),
                    "peak_rss_mb": round(peak_rss_mb(), 1),
                    "trained_tokens": state.trained_tokens,
                }
                progress.advance(step, record["train_loss"], lr, record["tokens_per_second"])
                window = dict.fromkeys(window, 0)
            else:
                progress.advance(step)

            if step % cfg.train.eval_every == 0 or step % steps_per_epoch == 0 or step == total_steps:
                val_loss, val_acc = evaluate_loss(task, body, cfg, device)
                record = {
                    **(record or {"step": step, "epoch": round(step / steps_per_epoch, 4)}),
                    "val_loss": val_loss,
                    "val_accuracy": val_acc,
                }
                improved = stopper.update(step, val_loss)
                if improved:
                    save_best(best_path, trained, step, val_loss)
                progress.say(
                    f"step {step}: val_loss {val_loss:.4f}  val_accuracy {val_acc:.3f}"
                    + ("  (best)" if improved else "")
                )
                stopped_early = stopper.should_stop
            if record is not None:
                write_metrics(metrics, record, cfg.train.nan_policy)

            state.best_val_loss, state.best_step = stopper.best_loss, stopper.best_step
            state.evals_without_improvement = stopper.evals_without_improvement
            state.wall_seconds = time.perf_counter() - started
            if step % cfg.train.save_every == 0 and step != total_steps and not stopped_early:
                save_checkpoint(ckpt_dir, trained, optimizer, scheduler, state)
                progress.say(f"step {step}: checkpoint saved")
            if stopped_early:
                progress.say(
                    f"early stopping at step {step}: no improvement in {stopper.evals_without_improvement} evaluations"
                )
                break

    # ---- save: the best weights, not the last ----
    if best_path.exists():
        load_best(best_path, trained)
    if cfg.method.name == "lora":
        write_dir_atomic(out_dir / "adapter", lambda folder: body.save_pretrained(folder))
        body = body.merge_and_unload()
    encoder.model = body
    save_encoder(encoder, out_dir / "merged")
    if isinstance(task, ClassificationTask):
        from safetensors.torch import save

        with atomic_file(out_dir / HEAD_FILE) as fh:
            fh.write(
                save({k: v.contiguous() for k, v in head.state_dict().items()}, {"labels": json.dumps(task.labels)})
            )
    history = read_metrics(out_dir)
    plot_losses(history, out_dir / "loss.png")
    val_losses = [m["val_loss"] for m in history if "val_loss" in m]
    summary = RunSummary(
        out_dir=str(out_dir),
        steps=state.step,
        trained_tokens=state.trained_tokens,
        best_step=stopper.best_step,
        best_val_loss=stopper.best_loss,
        initial_val_loss=val_losses[0] if val_losses else None,
        wall_seconds=round(time.perf_counter() - started, 2),
        stopped_early=stopped_early,
    )
    write_summary(out_dir, summary.__dict__)
    metrics.close()
    return summary
