"""The fine-tuning recipe: setup, one visible training loop, save.

Read `train()` top to bottom: it is the whole algorithm. Helpers live in the sibling modules.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tunesmith.config import Config, dump_config
from tunesmith.data.batching import epoch_order, make_batch
from tunesmith.data.prepare import PreparedData, prepare_data
from tunesmith.data.tokenize import IGNORE_INDEX, TokenizedExample
from tunesmith.errors import TunesmithError
from tunesmith.export import plot_losses, save_adapter, save_merged
from tunesmith.models import load_model
from tunesmith.precision import autocast, compute_dtype
from tunesmith.progress import MetricsLog, TrainProgress, peak_rss_mb, read_metrics
from tunesmith.train import distributed
from tunesmith.train.arena import ActivationArena, fix_mmap_threshold
from tunesmith.train.checkpoint import (
    TrainerState,
    list_checkpoints,
    load_best,
    load_checkpoint,
    read_trainer_state,
    save_best,
    save_checkpoint,
    write_text_atomic,
)
from tunesmith.train.distributed import ONE_PROCESS, Dist, LossModule, split_by_tokens, split_evenly
from tunesmith.train.flops import flops_per_token, mean_attended_keys, measured_peak_flops
from tunesmith.train.fused_lora import fuse_lora
from tunesmith.train.lean import LeanStorage
from tunesmith.train.loss import output_layer
from tunesmith.train.optim import build_optimizer, build_scheduler
from tunesmith.train.samples import SampleSet
from tunesmith.train.stopping import EarlyStopping

RUN_MARKERS = ("config.yaml", "metrics.jsonl", "checkpoints", "adapter", "merged")


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


def check_out_dir(out_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to mix two runs in one folder; called before anything is written."""
    holds_run = out_dir.is_dir() and any((out_dir / m).exists() for m in RUN_MARKERS)
    if resume:
        if not list_checkpoints(out_dir / "checkpoints"):
            raise TunesmithError(f"--resume: {out_dir} has no checkpoint to resume from")
    elif holds_run and not overwrite:
        raise TunesmithError(f"{out_dir} already holds a run; pass --overwrite to replace it or --resume")
    if out_dir.exists() and not out_dir.is_dir():
        raise TunesmithError(f"out_dir {out_dir} exists and is not a folder")


def attach_method(model, cfg: Config, task_type: str = "CAUSAL_LM"):
    """The model as the method trains it: all weights (full) or a PEFT LoRA adapter of `task_type`."""
    if cfg.method.name == "full":
        model.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        task_type=task_type,
        r=cfg.method.r,
        lora_alpha=cfg.method.alpha,
        lora_dropout=cfg.method.dropout,
        target_modules=cfg.method.target_modules,
    )
    return get_peft_model(model, lora)


def _unlabelled(pad_id: int) -> TokenizedExample:
    """For a process left without examples (a short last step, the last validation batches): it
    still runs a forward, as FSDP2's collectives need every process, on one padding token without
    labels, adding nothing to loss or gradient."""
    return TokenizedExample([pad_id], [IGNORE_INDEX], 0, 1)


class StepBatches:
    """This process's micro-batches of each optimizer step: a pure function of the step, so resume is exact.

    A step's examples (batch_size x grad_accum x world_size of them) do not depend on the world
    size; they are split across processes by tokens, so all finish their micro-batches together,
    then each process's share into grad_accum micro-batches. The epoch's order is computed once
    per epoch, not once per step.
    """

    def __init__(self, examples, cfg: Config, pad_id: int, steps_per_epoch: int, dist: Dist):
        """`examples`: a view of the token store (data/views.py) or an in-memory one (views.Listed)."""
        self.examples, self.cfg, self.pad_id, self.steps_per_epoch = examples, cfg, pad_id, steps_per_epoch
        self.dist = dist
        self.per_step = cfg.train.batch_size * cfg.train.grad_accum * dist.world_size
        # Arrays of the view (data/views.py); an example's tokens are gathered only when its step comes.
        self.lengths = examples.lengths
        self.label_counts = examples.shifted_label_counts
        self._epoch: int | None = None
        self._epoch_order: list[int] = []

    def _order(self, epoch: int) -> list[int]:
        if self._epoch != epoch:
            # Grouped by whole steps, so which examples share a step depends neither on grad_accum
            # nor on the number of processes.
            cfg = self.cfg
            self._epoch = epoch
            self._epoch_order = epoch_order(
                self.lengths, self.per_step, cfg.train.seed, epoch, cfg.data.group_by_length
            )
        return self._epoch_order

    def __call__(self, step: int) -> tuple[list, int, int]:
        """(this process's micro-batches, label tokens and tokens of the whole step)."""
        epoch, index = divmod(step, self.steps_per_epoch)
        chosen = self._order(epoch)[index * self.per_step : (index + 1) * self.per_step]
        share = split_by_tokens(self.lengths[chosen].tolist(), self.dist.world_size)[self.dist.rank]
        mine = [self.examples[chosen[position]] for position in share]
        batches = [
            make_batch(group or [_unlabelled(self.pad_id)], self.pad_id, self.cfg.data.packing)
            for group in split_evenly(mine, self.cfg.train.grad_accum)
        ]
        return batches, int(self.label_counts[chosen].sum()), int(self.lengths[chosen].sum())


class Prefetched:
    """The next step's micro-batches gathered in a background thread while this step trains, so the
    step never waits on data (the gather is numpy and tensor copies, which mostly release the GIL)."""

    def __init__(self, step_batches: StepBatches, total_steps: int):
        self.step_batches, self.total_steps = step_batches, total_steps
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="tunesmith-prefetch")
        self.next = None  # (step, future)

    def __call__(self, step: int):
        ready = self.next[1].result() if self.next is not None and self.next[0] == step else None
        result = ready if ready is not None else self.step_batches(step)
        self.next = (step + 1, self.pool.submit(self.step_batches, step + 1)) if step + 1 < self.total_steps else None
        return result

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


@torch.no_grad()
def evaluate_loss(module, examples, cfg: Config, pad_id: int, device, dist: Dist = ONE_PROCESS) -> tuple[float, float]:
    """Validation loss (per label token) and token accuracy; the processes share the batches."""
    was_training = module.training
    module.eval()
    order = np.argsort(examples.lengths, kind="stable")
    size = cfg.train.batch_size
    starts = list(range(0, len(order), size))
    # Every process runs as many forwards (FSDP2 gathers weights in each); a missing one is empty.
    rounds = -(-len(starts) // dist.world_size)
    totals = torch.zeros(3, dtype=torch.float64)  # loss, correct, label tokens
    for round_ in range(rounds):
        index = round_ * dist.world_size + dist.rank
        chosen = [examples[i] for i in order[starts[index] : starts[index] + size]] if index < len(starts) else []
        batch = make_batch(chosen or [_unlabelled(pad_id)], pad_id, cfg.data.packing)
        with autocast(cfg.train.dtype, device):
            loss_sum, correct = module(_to(batch, device))
        totals += torch.tensor([loss_sum.item(), int(correct), batch.n_label_tokens], dtype=torch.float64)
    total, correct, count = dist.sum(totals).tolist()
    module.train(was_training)
    return total / max(count, 1), correct / max(count, 1)


def _to(batch, device):
    if device.type == "cpu":
        return batch
    for name in ("input_ids", "targets", "attention_mask", "position_ids"):
        value = getattr(batch, name)
        if value is not None:
            setattr(batch, name, value.to(device, non_blocking=True))
    return batch


def train(cfg: Config, resume: bool = False, overwrite: bool = False) -> RunSummary:
    out_dir = Path(cfg.out_dir)
    # One process: no process group, every reduction below returns its input. Several (started by
    # `tunesmith train --nproc-per-node N` or torchrun): rank 0 alone writes the run folder.
    dist = distributed.start(cfg.distributed.timeout_s)
    check_out_dir(out_dir, resume, overwrite)  # on every process, before the first collective below
    distributed.check_same_config(dist, dump_config(cfg))
    strategy = distributed.resolve_strategy(cfg.distributed.strategy, cfg.method.name)

    # ---- setup: everything that can fail on bad input happens before out_dir is touched ----
    loaded = load_model(cfg.model)
    tokenizer, pad_id = loaded.tokenizer, loaded.tokenizer.pad_token_id
    data: PreparedData = prepare_data(cfg.data, tokenizer, cfg.train.seed, cfg.train.batch_size, cfg.train.grad_accum)
    if not data.validation:
        raise TunesmithError("no validation data: give data.validation or a data.val_fraction > 0")
    examples_per_step = cfg.train.batch_size * cfg.train.grad_accum * dist.world_size
    steps_per_epoch = math.ceil(len(data.train) / examples_per_step)
    total_steps = cfg.train.max_steps or max(1, math.ceil(cfg.train.epochs * steps_per_epoch))
    ckpt_dir, best_path = out_dir / "checkpoints", out_dir / "checkpoints" / "best"
    if resume:
        _check_same_global_batch(read_trainer_state(list_checkpoints(ckpt_dir)[-1]), examples_per_step, dist)

    device = dist.device
    torch.manual_seed(cfg.train.seed)
    model = attach_method(loaded.model, cfg).to(device)
    dtype = compute_dtype(cfg.train.dtype, device)
    lean = LeanStorage(model, dtype) if cfg.method.name == "lora" and dtype != torch.float32 else None
    if cfg.method.name == "lora":
        fuse_lora(model)
    if cfg.train.gradient_checkpointing:
        output_layer(model)[0].gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    compile_model = cfg.train.compile and dist.world_size == 1
    if compile_model:
        output_layer(model)[0].compile()
    # On CPU glibc's heap would fragment around the saved activations (train/arena.py). Full
    # fine-tuning saves autocast's bf16 copy of every trained weight, which autocast's cache holds
    # anyway: an arena would copy 270 MB a micro-batch for nothing (measured 486 -> 573 tokens/s
    # without it), so only a lean LoRA run gets one; every CPU run gets the fixed threshold.
    # torch.compile cannot trace the arena's hooks (and plans its own buffers).
    heap_fixed = device.type == "cpu" and fix_mmap_threshold()
    arena = ActivationArena() if heap_fixed and lean is not None and not compile_model else None
    # The loss is the forward that DDP / FSDP2 wrap; on one process it runs as it is.
    module = distributed.wrap(LossModule(model, cfg.train.loss_chunk_size), strategy, dist)
    module.train()
    # MFU = achieved model FLOPs / this machine's measured matmul peak (timed once, then cached).
    peak_flops = measured_peak_flops(device, dtype)
    attended_keys = mean_attended_keys(data.train.lengths)
    # After wrapping: FSDP2 replaces the parameters by their shards.
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, cfg.train)
    scheduler = build_scheduler(optimizer, cfg.train, total_steps)
    stopper = EarlyStopping(
        cfg.train.early_stopping.patience if cfg.train.early_stopping else None,
        cfg.train.early_stopping.min_delta if cfg.train.early_stopping else 0.0,
    )
    step_batches = Prefetched(StepBatches(data.train, cfg, pad_id, steps_per_epoch, dist), total_steps)
    samples = SampleSet(data.validation_examples, cfg.eval.samples, cfg.eval.max_new_tokens)

    if resume:
        state = load_checkpoint(list_checkpoints(ckpt_dir)[-1], module, optimizer, scheduler, dist)
        stopper.best_loss, stopper.best_step = state.best_val_loss, state.best_step
        stopper.evals_without_improvement = state.evals_without_improvement
        metrics = MetricsLog(out_dir / "metrics.jsonl", state.step, cfg.train.report_to) if dist.is_main else None
        samples.load(out_dir / "samples.json")
    else:
        if dist.is_main:
            if out_dir.exists():
                for marker in (*RUN_MARKERS, "loss.png", "summary.json", "samples.json"):
                    target = out_dir / marker
                    shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
            out_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(out_dir / "config.yaml", dump_config(cfg))
        state = TrainerState(0, 0, None, None, 0, 0.0)
        metrics = MetricsLog(out_dir / "metrics.jsonl", None, cfg.train.report_to) if dist.is_main else None
        val_loss, val_acc = evaluate_loss(module, data.validation, cfg, pad_id, device, dist)
        _write(metrics, {"step": 0, "epoch": 0.0, "val_loss": val_loss, "val_token_accuracy": val_acc})
        with distributed.whole_weights(module), autocast(cfg.train.dtype, device):
            samples.generate("base", model, tokenizer)
        if dist.is_main:
            samples.save(out_dir / "samples.json")
    state.examples_per_step, state.world_size = examples_per_step, dist.world_size

    # ---- the loop ----
    started = time.perf_counter() - state.wall_seconds
    # Throughput counts training compute only, not evaluations or checkpoint writes.
    window_tokens, window_seconds = 0, 0.0
    # Running sums stay on the device; reading them (.item()) is a sync point, done at log steps only.
    window_loss = torch.zeros((), device=device)
    window_correct = torch.zeros((), dtype=torch.long, device=device)
    window_labels = 0
    stopped_early = False
    with TrainProgress(total_steps, state.step, show=dist.is_main) as progress:
        progress.say(data.summary())
        progress.say(
            f"training {cfg.model} ({cfg.method.name}) for {total_steps} steps, "
            f"{len(data.train)} examples, {steps_per_epoch} steps/epoch"
            + (f", {dist.world_size} processes ({strategy})" if dist.world_size > 1 else "")
        )
        if cfg.train.compile and not compile_model:
            progress.say("train.compile is off: torch.compile is not tested here under DDP/FSDP2")
        for step in range(state.step + 1, total_steps + 1):
            step_start = time.perf_counter()
            # Normalise by the label tokens of the whole step, on every process together, so every
            # label token weighs the same however the examples fall into micro-batches and processes.
            # Every process knows them without asking: the step's examples are a function of the step.
            batches, step_labels, step_tokens = step_batches(step - 1)
            # DDP and FSDP2 average gradients over processes; the sum is what one process would get.
            scale = dist.world_size / max(step_labels, 1)
            for i, batch in enumerate(batches):
                with distributed.no_gradient_sync(module, last_micro_batch=i == len(batches) - 1):
                    with arena.saving() if arena else nullcontext(), autocast(cfg.train.dtype, device):
                        loss_sum, correct = module(_to(batch, device))
                    (loss_sum * scale).backward()
                window_loss += loss_sum.detach().float()
                window_correct += correct
            window_labels += step_labels
            window_tokens += step_tokens
            state.trained_tokens += step_tokens
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
            window_seconds += time.perf_counter() - step_start

            record = None
            if step % cfg.train.log_every == 0 or step == total_steps:
                rate = window_tokens / max(window_seconds, 1e-9)
                loss_total, correct_total = dist.sum(torch.stack([window_loss, window_correct.float()])).tolist()
                # Per process: peak RSS, and the trained weights + optimizer state it holds (gradients: freed).
                memory = dist.gather(
                    torch.tensor([peak_rss_mb(), distributed.local_state_bytes(params, optimizer) / 2**20])
                )
                record = {
                    "step": step,
                    "epoch": round(step / steps_per_epoch, 4),
                    "train_loss": loss_total / max(window_labels, 1),
                    "train_token_accuracy": correct_total / max(window_labels, 1),
                    "lr": lr,
                    "tokens_per_second": rate,
                    "mfu": rate
                    * flops_per_token(model, window_labels / max(window_tokens, 1), attended_keys)
                    / (peak_flops * dist.world_size),
                    "grad_norm": float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm),
                    "peak_rss_mb": round(memory[:, 0].max().item(), 1),
                    "peak_rss_mb_mean": round(memory[:, 0].mean().item(), 1),
                    "state_mb": round(memory[:, 1].max().item(), 1),
                    "trained_tokens": state.trained_tokens,
                    "world_size": dist.world_size,
                }
                progress.advance(step, record["train_loss"], lr, rate)
                window_tokens, window_seconds, window_labels = 0, 0.0, 0
                window_loss.zero_()
                window_correct.zero_()
            else:
                progress.advance(step)

            if step % cfg.train.eval_every == 0 or step % steps_per_epoch == 0 or step == total_steps:
                val_loss, val_acc = evaluate_loss(module, data.validation, cfg, pad_id, device, dist)
                record = {
                    **(record or {"step": step, "epoch": round(step / steps_per_epoch, 4)}),
                    "val_loss": val_loss,
                    "val_token_accuracy": val_acc,
                }
                improved = stopper.update(step, val_loss)
                if improved:
                    save_best(best_path, module, step, val_loss, dist)
                progress.say(
                    f"step {step}: val_loss {val_loss:.4f}  val_token_accuracy {val_acc:.3f}"
                    + ("  (best)" if improved else "")
                )
                stopped_early = stopper.should_stop
            if record is not None:
                _write(metrics, record)

            state.best_val_loss, state.best_step = stopper.best_loss, stopper.best_step
            state.evals_without_improvement = stopper.evals_without_improvement
            state.wall_seconds = time.perf_counter() - started
            if step % cfg.train.save_every == 0 and step != total_steps and not stopped_early:
                save_checkpoint(ckpt_dir, module, optimizer, scheduler, state, dist)
                progress.say(f"step {step}: checkpoint saved")
            if stopped_early:
                progress.say(
                    f"early stopping at step {step}: no improvement in {stopper.evals_without_improvement} evaluations"
                )
                break
    step_batches.close()

    # ---- save: the best weights, not the last ----
    if lean is not None:
        lean.restore(loaded.path)
    if stopper.best_step is not None:  # the same answer on every process, unlike a look at the disk
        load_best(best_path, module)
    # Same precision as the base samples (which LeanStorage's bf16 weights require) and as eval.
    with distributed.whole_weights(module), autocast(cfg.train.dtype, device):
        samples.generate("finetuned", model, tokenizer)
    # The last collective: FSDP2 gathers the whole model on rank 0; the others are done.
    exported = distributed.whole_model(module, lambda: load_model(cfg.model).model, dist)
    dist.close()
    wall_seconds = round(time.perf_counter() - started, 2)
    if not dist.is_main:
        return RunSummary(
            str(out_dir),
            state.step,
            state.trained_tokens,
            stopper.best_step,
            stopper.best_loss,
            None,
            wall_seconds,
            stopped_early,
        )
    samples.save(out_dir / "samples.json")
    if cfg.method.name == "lora":
        save_adapter(exported, out_dir)
    save_merged(exported, tokenizer, out_dir)
    history = read_metrics(out_dir / "metrics.jsonl")
    plot_losses(history, out_dir / "loss.png")
    val_losses = [m["val_loss"] for m in history if "val_loss" in m]
    summary = RunSummary(
        out_dir=str(out_dir),
        steps=state.step,
        trained_tokens=state.trained_tokens,
        best_step=stopper.best_step,
        best_val_loss=stopper.best_loss,
        initial_val_loss=val_losses[0] if val_losses else None,
        wall_seconds=wall_seconds,
        stopped_early=stopped_early,
    )
    write_text_atomic(out_dir / "summary.json", json.dumps(summary.__dict__, indent=1))
    metrics.close()
    return summary


def _write(metrics: MetricsLog | None, record: dict) -> None:
    """Rank 0 writes metrics.jsonl; the other processes have none."""
    if metrics is not None:
        metrics.write(record)


def _check_same_global_batch(saved: TrainerState, examples_per_step: int, dist: Dist) -> None:
    """A step's examples depend on how many there are per step: a resumed run must keep that number."""
    if saved.examples_per_step and saved.examples_per_step != examples_per_step:
        raise TunesmithError(
            f"--resume: the checkpoint took {saved.examples_per_step} examples per step ({saved.world_size} "
            f"processes); this run would take {examples_per_step} ({dist.world_size} processes x train.batch_size "
            "x train.grad_accum): change train.grad_accum so the two match"
        )
