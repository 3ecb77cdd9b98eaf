"""The fine-tuning recipe: setup, one visible training loop, save.

Read `train()` top to bottom: it is the whole algorithm. Helpers live in the sibling modules.
"""

from __future__ import annotations

import math
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from tunesmith.chat.render import save_rendering
from tunesmith.config import Config, dump_config
from tunesmith.data.batching import epoch_order
from tunesmith.data.prepare import PreparedData, prepare_data
from tunesmith.errors import TunesmithError
from tunesmith.export import plot_losses, save_adapter, save_merged
from tunesmith.kernels.arena import ActivationArena, fix_mmap_threshold, release_free_heap
from tunesmith.kernels.fused_lora import fuse_lora
from tunesmith.kernels.lean import LeanStorage
from tunesmith.models import load_model
from tunesmith.paths import write_text_atomic
from tunesmith.precision import autocast, compute_dtype
from tunesmith.progress import TrainProgress, peak_rss_mb
from tunesmith.runfolder import METRICS, MetricsLog, list_checkpoints, read_metrics, write_summary
from tunesmith.train import distributed
from tunesmith.train.checkpoint import (
    TrainerState,
    load_best,
    load_checkpoint,
    read_trainer_state,
    save_best,
    save_checkpoint,
)
from tunesmith.train.distributed import Dist, LossModule, split_by_tokens, split_evenly
from tunesmith.train.flops import flops_per_token, mean_attended_keys, measured_peak_flops
from tunesmith.train.loss import output_layer
from tunesmith.train.objective import evaluate, objective_for
from tunesmith.train.optim import build_optimizer, build_scheduler
from tunesmith.train.rollout import prepare_graded
from tunesmith.train.samples import SampleSet
from tunesmith.train.stopping import EarlyStopping, stop_if_diverged

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
    if not cfg.method.lora:
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


@dataclass
class Step:
    batches: list  # this process's micro-batches
    items: list  # the examples of the whole step, on all processes
    tokens: int  # their tokens
    label_tokens: int


class StepBatches:
    """This process's micro-batches of each optimizer step: a pure function of the step, so resume is exact.

    A step's examples (batch_size x grad_accum x world_size of them) do not depend on the world
    size; they are split across processes by tokens, so all finish their micro-batches together,
    then each process's share into grad_accum micro-batches (the objective lays them out). The
    epoch's order is computed once per epoch, not once per step.
    """

    def __init__(self, examples, cfg: Config, objective, steps_per_epoch: int, dist: Dist):
        """`examples`: a view of the token store (data/views.py), or a list of preference pairs."""
        self.examples, self.cfg, self.objective, self.steps_per_epoch = examples, cfg, objective, steps_per_epoch
        self.dist = dist
        self.per_step = cfg.train.batch_size * cfg.train.grad_accum * dist.world_size
        # Arrays: an example's tokens are gathered only when its step comes.
        self.lengths, self.label_counts = objective.sizes(examples)
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

    def __call__(self, step: int) -> Step:
        epoch, index = divmod(step, self.steps_per_epoch)
        chosen = self._order(epoch)[index * self.per_step : (index + 1) * self.per_step]
        share = split_by_tokens(self.lengths[chosen].tolist(), self.dist.world_size)[self.dist.rank]
        items = [self.examples[i] for i in chosen]  # gathered once: this process's share is among them
        mine = [items[position] for position in share]
        batches = [self.objective.batch(group) for group in split_evenly(mine, self.cfg.train.grad_accum)]
        return Step(batches, items, int(self.lengths[chosen].sum()), int(self.label_counts[chosen].sum()))


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


def train(cfg: Config, resume: bool = False, overwrite: bool = False) -> RunSummary:
    out_dir = Path(cfg.out_dir)
    # One process: no process group, every reduction below returns its input. Several (started by
    # `tunesmith train --nproc-per-node N` or torchrun): rank 0 alone writes the run folder.
    dist = distributed.start(cfg.distributed.timeout_s)
    check_out_dir(out_dir, resume, overwrite)  # on every process, before the first collective below
    distributed.check_same_config(dist, dump_config(cfg))
    strategy = distributed.resolve_strategy(cfg.distributed.strategy, "lora" if cfg.method.lora else "full")

    # ---- setup: everything that can fail on bad input happens before out_dir is touched ----
    loaded = load_model(cfg.model)
    tokenizer, pad_id = loaded.tokenizer, loaded.tokenizer.pad_token_id
    device = dist.device
    # The objective (train/objective.py: SFT, DPO or GRPO) owns the batch layout, the loss and its metrics.
    objective = objective_for(cfg, pad_id, device, tokenizer)
    if cfg.method.name == "grpo":  # prompts for a grader, not labelled examples
        data = prepare_graded(cfg, objective.grader, tokenizer)
    else:
        data: PreparedData = prepare_data(
            cfg.data, tokenizer, cfg.train.seed, cfg.train.batch_size, cfg.train.grad_accum
        )
    objective.check(data)
    if not data.validation:
        raise TunesmithError("no validation data: give data.validation or a data.val_fraction > 0")
    examples_per_step = cfg.train.batch_size * cfg.train.grad_accum * dist.world_size
    steps_per_epoch = math.ceil(len(data.train) / examples_per_step)
    total_steps = cfg.train.max_steps or max(1, math.ceil(cfg.train.epochs * steps_per_epoch))
    ckpt_dir, best_path = out_dir / "checkpoints", out_dir / "checkpoints" / "best"
    if resume:
        _check_same_global_batch(read_trainer_state(list_checkpoints(ckpt_dir)[-1]), examples_per_step, dist)

    torch.manual_seed(cfg.train.seed)
    model = attach_method(loaded.model, cfg).to(device)
    dtype = compute_dtype(cfg.train.dtype, device)
    # The kernels (kernels/) unless train.fast_paths is off: then PEFT's and transformers' own modules.
    fast_lora = cfg.method.lora and cfg.train.fast_paths
    lean = LeanStorage(model, dtype) if fast_lora else None
    if fast_lora:
        fuse_lora(model)
    if cfg.train.gradient_checkpointing:
        output_layer(model)[0].gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    compile_model = cfg.train.compile and dist.world_size == 1
    if compile_model:
        output_layer(model)[0].compile()
    # On CPU glibc's heap would fragment around the saved activations (kernels/arena.py). Full
    # fine-tuning saves autocast's bf16 copy of every trained weight, which autocast's cache holds
    # anyway: an arena would copy 270 MB a micro-batch for nothing (measured 486 -> 573 tokens/s
    # without it); in float32 it did not help either (peak RSS 3,862 -> 4,240 MB), so only a lean
    # LoRA run gets one; every CPU run gets the fixed threshold. torch.compile cannot trace the
    # arena's hooks (and plans its own buffers).
    heap_fixed = device.type == "cpu" and cfg.train.fast_paths and fix_mmap_threshold()
    arena = ActivationArena() if heap_fixed and lean is not None and not compile_model else None
    trim_heap = heap_fixed and arena is None
    # The loss is the forward that DDP / FSDP2 wrap; on one process it runs as it is.
    # Before wrapping, on the whole model: work before the first step (DPO's reference log-probs).
    objective.setup(model, data)
    module = distributed.wrap(LossModule(model, objective), strategy, dist, shard_vocab=cfg.train.fast_paths)
    module.train()
    # MFU = achieved model FLOPs / this machine's measured matmul peak (timed once, then cached).
    peak_flops = measured_peak_flops(device, dtype)
    attended_keys = mean_attended_keys(objective.sequence_lengths(data.train))
    # After wrapping: FSDP2 replaces the parameters by their shards.
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, cfg.train)
    scheduler = build_scheduler(optimizer, cfg.train, total_steps)
    stopper = EarlyStopping(
        cfg.train.early_stopping.patience if cfg.train.early_stopping else None,
        cfg.train.early_stopping.min_delta if cfg.train.early_stopping else 0.0,
    )
    step_batches = Prefetched(StepBatches(data.train, cfg, objective, steps_per_epoch, dist), total_steps)
    samples = SampleSet(data.validation_examples, cfg.eval.samples, cfg.eval.max_new_tokens)

    if resume:
        state = load_checkpoint(list_checkpoints(ckpt_dir)[-1], module, optimizer, scheduler, dist)
        stopper.best_loss, stopper.best_step = state.best_val_loss, state.best_step
        stopper.evals_without_improvement = state.evals_without_improvement
        metrics = MetricsLog(out_dir / METRICS, state.step, cfg.train.report_to) if dist.is_main else None
        samples.load(out_dir / "samples.json")
    else:
        if dist.is_main:
            if out_dir.exists():
                for marker in (*RUN_MARKERS, "loss.png", "summary.json", "samples.json"):
                    target = out_dir / marker
                    shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
            out_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(out_dir / "config.yaml", dump_config(cfg))
            save_rendering(out_dir, tokenizer)  # how tools were rendered: export and serve render the same
        state = TrainerState(0, 0, None, None, 0, 0.0)
        metrics = MetricsLog(out_dir / METRICS, None, cfg.train.report_to) if dist.is_main else None
        write_metrics(
            metrics,
            {"step": 0, "epoch": 0.0, **evaluate(module, objective, data.validation, cfg, dist)},
            cfg.train.nan_policy,
        )
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
    window_sums = torch.zeros(len(objective.sums), device=device)
    window_counts = [0] * len(objective.step_counts)
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
            # The objective normalises by counts of the whole step (e.g. its label tokens) on every
            # process together, so every label token weighs the same however the examples fall into
            # micro-batches and processes. Every process knows them without asking.
            batch_step = step_batches(step - 1)
            objective.start_step(batch_step.items)
            for i, batch in enumerate(batch_step.batches):
                with distributed.no_gradient_sync(module, last_micro_batch=i == len(batch_step.batches) - 1):
                    with arena.saving() if arena else nullcontext(), autocast(cfg.train.dtype, device):
                        loss, sums = module(batch)
                    # DDP and FSDP2 average gradients over processes; the sum is what one process would get.
                    (loss * dist.world_size).backward()
                window_sums += sums
            window_counts = [a + b for a, b in zip(window_counts, objective.step_counts, strict=True)]
            window_labels += batch_step.label_tokens
            window_tokens += batch_step.tokens
            state.trained_tokens += batch_step.tokens
            grad_norm = (
                torch.nn.utils.clip_grad_norm_(params, cfg.train.max_grad_norm)
                if cfg.train.max_grad_norm
                else torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
            )
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if trim_heap:
                release_free_heap()
            state.step = step
            window_seconds += time.perf_counter() - step_start

            record = None
            if step % cfg.train.log_every == 0 or step == total_steps:
                rate = window_tokens / max(window_seconds, 1e-9)
                window_metrics = objective.metrics(dist.sum(window_sums).tolist(), window_counts, "train")
                # Per process: peak RSS, and the trained weights + optimizer state it holds (gradients: freed).
                memory = dist.gather(
                    torch.tensor([peak_rss_mb(), distributed.local_state_bytes(params, optimizer) / 2**20])
                )
                record = {
                    "step": step,
                    "epoch": round(step / steps_per_epoch, 4),
                    **window_metrics,
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
                window_sums.zero_()
                window_counts = [0] * len(window_counts)
            else:
                progress.advance(step)

            if step % cfg.train.eval_every == 0 or step % steps_per_epoch == 0 or step == total_steps:
                validation = evaluate(module, objective, data.validation, cfg, dist)
                record = {**(record or {"step": step, "epoch": round(step / steps_per_epoch, 4)}), **validation}
                val_loss = validation["val_loss"]
                improved = stopper.update(step, val_loss)
                if improved:
                    save_best(best_path, module, step, val_loss, dist)
                progress.say(
                    f"step {step}: "
                    + "  ".join(f"{k} {v:.4f}" for k, v in validation.items())
                    + ("  (best)" if improved else "")
                )
                stopped_early = stopper.should_stop
            if record is not None:
                write_metrics(metrics, record, cfg.train.nan_policy)

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
    if cfg.method.lora:
        save_adapter(exported, out_dir)
    save_merged(exported, tokenizer, out_dir)
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
        wall_seconds=wall_seconds,
        stopped_early=stopped_early,
    )
    write_summary(out_dir, summary.__dict__)
    metrics.close()
    return summary


def write_metrics(metrics: MetricsLog | None, record: dict, nan_policy: str) -> None:
    """One metrics line, after ``train.nan_policy`` had its say (the encoder recipe writes through
    this too). Rank 0 writes metrics.jsonl; the other processes have none. Every process checks the
    line (they all hold the same reduced numbers), so a diverged run stops on all of them at once."""
    stop_if_diverged(record, nan_policy)
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
