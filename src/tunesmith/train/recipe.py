"""The fine-tuning recipe: setup, one visible training loop, save.

Read `train()` top to bottom: it is the whole algorithm. Helpers live in the sibling modules.
"""

from __future__ import annotations

import math
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
from tunesmith.export import save_adapter, save_merged
from tunesmith.kernels.arena import ActivationArena, fix_mmap_threshold, release_free_heap
from tunesmith.kernels.fused_lora import fuse_lora
from tunesmith.kernels.label_loss import output_layer
from tunesmith.kernels.lean import LeanStorage
from tunesmith.kernels.token_rows import lean_token_rows
from tunesmith.models.vocabulary import load_model_for
from tunesmith.precision import autocast, compute_dtype, slow_dtype_warning
from tunesmith.progress import TrainProgress, peak_rss_mb
from tunesmith.runfolder import CHECKPOINTS, SAMPLES, TRAIN, TRAIN_LOSS, list_checkpoints
from tunesmith.train import distributed
from tunesmith.train.checkpoint import TrainerState, read_trainer_state
from tunesmith.train.distributed import Dist, LossModule, split_by_tokens, split_evenly
from tunesmith.train.dpo import DPOObjective
from tunesmith.train.fast_paths import describe, fast_paths_used
from tunesmith.train.flops import PeakFlops, mean_attended_keys, model_flops_per_second
from tunesmith.train.grpo import GRPOObjective
from tunesmith.train.lr_finder import range_test, read_chosen, save_curve
from tunesmith.train.objective import Objective, SFTObjective, evaluate
from tunesmith.train.optim import build_optimizer
from tunesmith.train.rollout import prepare_graded
from tunesmith.train.run import RunSummary, TrainingRun, ValidationObserver, check_out_dir
from tunesmith.train.samples import SampleSet


def objective_for(cfg: Config, pad_id: int, device, tokenizer=None) -> Objective:
    """The objective of `cfg.method`; GRPO also needs the tokenizer (it samples and decodes answers)."""
    if cfg.method.name == "grpo":
        return GRPOObjective(cfg, pad_id, device, tokenizer)
    if cfg.method.name == "dpo":
        return DPOObjective(cfg, pad_id, device)
    return SFTObjective(cfg, pad_id, device)


def attach_method(model, cfg: Config, task_type: str = "CAUSAL_LM", token_ids: list[int] | None = None):
    """The model as the method trains it: all weights (full) or a PEFT LoRA adapter of `task_type`;
    under LoRA the rows of `token_ids` (tokens the config added) train too, without a copy of the embedding."""
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
        trainable_token_indices=token_ids or None,
    )
    return get_peft_model(model, lora)


@dataclass
class Step:
    batches: list  # this process's micro-batches
    items: list  # the examples of the whole step, on all processes
    tokens: int  # their tokens
    label_tokens: int
    computed_tokens: int  # this process's tokens that the model runs: a shared prompt prefix once


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
        tokens, labels = int(self.lengths[chosen].sum()), int(self.label_counts[chosen].sum())
        return Step(batches, items, tokens, labels, sum(batch.n_tokens for batch in batches))


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


@dataclass
class Trainee:
    """The model as it trains: `module` (the loss, DDP / FSDP2-wrapped) around `model`, and the kernels' state."""

    model: torch.nn.Module
    module: torch.nn.Module
    params: list
    lean: LeanStorage | None  # LoRA on the fast paths: the frozen weights stored lean
    arena: ActivationArena | None
    trim_heap: bool
    compiled: bool
    fast_paths_used: dict[str, str]  # train/fast_paths.py: said once in the log and in summary.json


def prepare_trainee(cfg: Config, loaded, objective, data: PreparedData, strategy: str, dist: Dist) -> Trainee:
    """The loaded model with the method attached, the kernels (kernels/) unless train.fast_paths is
    off (then PEFT's and transformers' own modules), and the loss wrapped for the processes."""
    device = dist.device
    model = attach_method(loaded.model, cfg, token_ids=loaded.added_ids).to(device)
    dtype = compute_dtype(cfg.train.dtype, device)
    fast_lora = cfg.method.lora and cfg.train.fast_paths
    lean = LeanStorage(model, dtype) if fast_lora else None
    if fast_lora:
        fuse_lora(model)
        lean_token_rows(model)
    if cfg.train.gradient_checkpointing:
        output_layer(model)[0].gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    compiled = cfg.train.compile and dist.world_size == 1
    if compiled:
        output_layer(model)[0].compile()
    # On CPU glibc's heap would fragment around the saved activations (kernels/arena.py). Full
    # fine-tuning saves autocast's bf16 copy of every trained weight, which autocast's cache holds
    # anyway: an arena would copy 270 MB a micro-batch for nothing (measured 486 -> 573 tokens/s
    # without it); in float32 it did not help either (peak RSS 3,862 -> 4,240 MB), so only a lean
    # LoRA run gets one; every CPU run gets the fixed threshold. torch.compile cannot trace the
    # arena's hooks (and plans its own buffers).
    heap_fixed = device.type == "cpu" and cfg.train.fast_paths and fix_mmap_threshold()
    arena = ActivationArena() if heap_fixed and lean is not None and not compiled else None
    # Before wrapping, on the whole model: work before the first step (DPO's reference log-probs).
    objective.setup(model, data)
    # The loss is the forward that DDP / FSDP2 wrap; on one process it runs as it is.
    module = distributed.wrap(LossModule(model, objective), strategy, dist, shard_vocab=cfg.train.fast_paths)
    module.train()
    # After wrapping: FSDP2 replaces the parameters by their shards.
    params = [p for p in module.parameters() if p.requires_grad]
    used = fast_paths_used(cfg, model, lean, arena is not None, device, strategy, dist.world_size)
    return Trainee(model, module, params, lean, arena, heap_fixed and arena is None, compiled, used)


def train(
    cfg: Config, resume: bool = False, overwrite: bool = False, on_validation: ValidationObserver | None = None
) -> RunSummary:
    """One run as `cfg` says; `on_validation` watches each evaluation and may stop the run (train/run.py)."""
    out_dir = Path(cfg.out_dir)
    # One process: no process group, every reduction below returns its input. Several (started by
    # `tunesmith train --nproc-per-node N` or torchrun): rank 0 alone writes the run folder.
    dist = distributed.start(cfg.distributed.timeout_s)
    check_out_dir(out_dir, resume, overwrite)  # on every process, before the first collective below
    distributed.check_same_config(dist, dump_config(cfg))
    strategy = distributed.resolve_strategy(cfg.distributed.strategy, "lora" if cfg.method.lora else "full")

    # ---- setup: everything that can fail on bad input happens before out_dir is touched ----
    loaded = load_model_for(cfg)
    tokenizer = loaded.tokenizer
    # The objective (train/objective.py: SFT, DPO or GRPO) owns the batch layout, the loss and its metrics.
    objective = objective_for(cfg, tokenizer.pad_token_id, dist.device, tokenizer)
    if cfg.method.name == "grpo":  # prompts for a grader (train/rollout.py), not labelled examples
        data = prepare_graded(cfg, objective.grader, tokenizer)
    else:
        data = prepare_data(cfg.data, tokenizer, cfg.train.seed, cfg.train.batch_size, cfg.train.grad_accum)
    objective.check(data)
    if not data.validation:
        raise TunesmithError("no validation data: give data.validation or a data.val_fraction > 0")
    examples_per_step = cfg.train.batch_size * cfg.train.grad_accum * dist.world_size
    steps_per_epoch = math.ceil(len(data.train) / examples_per_step)
    total_steps = cfg.train.max_steps or max(1, math.ceil(cfg.train.epochs * steps_per_epoch))
    if resume:
        latest = list_checkpoints(out_dir / CHECKPOINTS)[-1]
        _check_same_global_batch(read_trainer_state(latest), examples_per_step, dist)
    torch.manual_seed(cfg.train.seed)
    trainee = prepare_trainee(cfg, loaded, objective, data, strategy, dist)
    curve = None
    if cfg.train.lr == "auto":
        curve = None if resume else _find_lr(cfg, trainee, objective, data, steps_per_epoch, dist)
        lr = read_chosen(out_dir) if resume else curve.chosen
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"lr": lr})})  # config.yaml says it
    run = TrainingRun(cfg, trainee.module, trainee.params, steps_per_epoch, total_steps, resume, dist, on_validation)
    if curve is not None:
        save_curve(curve, out_dir)
    samples = SampleSet(data.validation_examples, cfg.eval.samples, cfg.eval.max_new_tokens)
    if resume:
        samples.load(out_dir / SAMPLES)
    else:
        chosen = {"lr_auto": curve.chosen} if curve else {}
        run.log({**run.record(0), **chosen, **evaluate(trainee.module, objective, data.validation, cfg, dist)})
        with distributed.whole_weights(trainee.module), autocast(cfg.train.dtype, dist.device):
            samples.generate("base", trainee.model, tokenizer)
        if dist.is_main:
            samples.save(out_dir / SAMPLES)
            save_rendering(out_dir, tokenizer)  # how tools were rendered: export and serve render the same
    run.state.examples_per_step, run.state.world_size = examples_per_step, dist.world_size

    # ---- the loop ----
    with TrainProgress(total_steps, run.state.step, show=dist.is_main) as progress:
        progress.say(data.summary())
        progress.say(
            f"training {cfg.model} ({cfg.method.name}) for {total_steps} steps, "
            f"{len(data.train)} examples, {steps_per_epoch} steps/epoch"
            + (f", {dist.world_size} processes ({strategy})" if dist.world_size > 1 else "")
        )
        progress.say(describe(trainee.fast_paths_used))
        if cfg.train.compile and not trainee.compiled:
            progress.say("train.compile is off: torch.compile is not tested here under DDP/FSDP2")
        if warning := slow_dtype_warning(cfg.train.dtype, dist.device):
            progress.say(f"warning: {warning}")
        _loop(run, trainee, objective, data, progress)

    # ---- save: the best weights, not the last ----
    if trainee.lean is not None:
        trainee.lean.restore(loaded.path)
    run.restore_best()
    # Same precision as the base samples (which LeanStorage's bf16 weights require) and as eval.
    with distributed.whole_weights(trainee.module), autocast(cfg.train.dtype, dist.device):
        samples.generate("finetuned", trainee.model, tokenizer)
    # The last collective: FSDP2 gathers the whole model on rank 0; the others are done.
    exported = distributed.whole_model(trainee.module, lambda: load_model_for(cfg).model, dist)
    dist.close()
    if dist.is_main:
        samples.save(out_dir / SAMPLES)
        if cfg.method.lora:
            save_adapter(exported, out_dir, tokenizer)
        save_merged(exported, tokenizer, out_dir)
    return run.finish(trainee.fast_paths_used)


def _find_lr(cfg: Config, trainee: Trainee, objective, data: PreparedData, steps_per_epoch: int, dist: Dist):
    """The LR range test (train/lr_finder.py) on the run's own first batches, everything restored after."""
    if dist.world_size > 1:
        raise TunesmithError("train.lr: auto runs on one process: find the rate there, then set train.lr")
    step_batches = StepBatches(data.train, cfg, objective, steps_per_epoch, dist)

    def train_step(step: int) -> torch.Tensor:
        batch_step = step_batches(step)
        objective.start_step(batch_step.items)
        total = torch.zeros((), device=dist.device)
        for batch in batch_step.batches:
            with trainee.arena.saving() if trainee.arena else nullcontext(), autocast(cfg.train.dtype, dist.device):
                loss, _ = trainee.module(batch)
            loss.backward()
            total += loss.detach()  # micro-batch losses are normalised by the whole step's counts
        return total

    curve = range_test(
        trainee.params, lambda lr: build_optimizer(trainee.params, cfg.train.model_copy(update={"lr": lr})), train_step
    )
    print(f"train.lr: auto: {len(curve.lrs)} steps of the range test chose lr {curve.chosen:.3g}", flush=True)
    return curve


class Window:
    """What the steps since the last metrics line add up to. Sums stay on the device; reading them
    (.item()) is a sync point, done at log steps only. Throughput counts training compute only,
    not evaluations or checkpoint writes."""

    def __init__(self, objective: Objective):
        self.sums = torch.zeros(len(objective.sums), device=objective.device)
        self.counts = [0] * len(objective.step_counts)
        self.tokens, self.label_tokens, self.computed_tokens, self.seconds = 0, 0, 0, 0.0

    def add(self, objective: Objective, step: Step, seconds: float) -> None:
        self.counts = [a + b for a, b in zip(self.counts, objective.step_counts, strict=True)]
        self.tokens += step.tokens
        self.label_tokens += step.label_tokens
        self.computed_tokens += step.computed_tokens
        self.seconds += seconds


def _loop(run: TrainingRun, trainee: Trainee, objective: Objective, data: PreparedData, progress) -> None:
    cfg, dist, module = run.cfg, run.dist, trainee.module
    step_batches = Prefetched(StepBatches(data.train, cfg, objective, run.steps_per_epoch, dist), run.total_steps)
    # MFU = achieved model FLOPs / this machine's measured matmul peak (timed once, then cached).
    peak_flops = PeakFlops(dist.device, compute_dtype(cfg.train.dtype, dist.device))
    attended_keys = mean_attended_keys(objective.sequence_lengths(data.train))
    window = Window(objective)
    for step in range(run.state.step + 1, run.total_steps + 1):
        step_start = time.perf_counter()
        # The objective normalises by counts of the whole step (e.g. its label tokens) on every
        # process together, so every label token weighs the same however the examples fall into
        # micro-batches and processes. Every process knows them without asking.
        batch_step = step_batches(step - 1)
        objective.start_step(batch_step.items)
        for i, batch in enumerate(batch_step.batches):
            with distributed.no_gradient_sync(module, last_micro_batch=i == len(batch_step.batches) - 1):
                with trainee.arena.saving() if trainee.arena else nullcontext(), autocast(cfg.train.dtype, dist.device):
                    loss, sums = module(batch)
                # DDP and FSDP2 average gradients over processes; the sum is what one process would get.
                (loss * dist.world_size).backward()
            window.sums += sums
        run.state.trained_tokens += batch_step.tokens
        grad_norm, lr = run.optimizer_step()
        if trainee.trim_heap:
            release_free_heap()
        window.add(objective, batch_step, time.perf_counter() - step_start)

        record = None
        if run.logs_at(step):
            rate = window.tokens / max(window.seconds, 1e-9)
            # One reduction: the metric sums and this process's computed tokens, of all processes.
            totals = dist.sum(torch.cat([window.sums, window.sums.new_tensor([window.computed_tokens])])).tolist()
            computed = totals.pop()
            record = {
                **run.record(step),
                **objective.metrics(totals, window.counts, TRAIN),
                "lr": lr,
                "tokens_per_second": rate,  # example tokens: a shared prompt counts in each example
                # Per process: every process is measured against one's peak.
                "mfu": peak_flops.utilisation(
                    model_flops_per_second(trainee.model, computed, window.label_tokens, attended_keys, window.seconds)
                    / dist.world_size
                ),
                "grad_norm": float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm),
                **_memory(trainee, run.optimizer, dist),
                "trained_tokens": run.state.trained_tokens,
                "world_size": dist.world_size,
            }
            progress.advance(step, record[TRAIN_LOSS], lr, rate)
            window = Window(objective)
        else:
            progress.advance(step)
        if run.end_step(step, record, lambda: evaluate(module, objective, data.validation, cfg, dist), progress):
            break
    step_batches.close()


def _memory(trainee: Trainee, optimizer, dist: Dist) -> dict:
    """Per process: peak RSS, and the trained weights + optimizer state it holds (gradients: freed)."""
    memory = dist.gather(
        torch.tensor([peak_rss_mb(), distributed.local_state_bytes(trainee.params, optimizer) / 2**20])
    )
    return {
        "peak_rss_mb": round(memory[:, 0].max().item(), 1),
        "peak_rss_mb_mean": round(memory[:, 0].mean().item(), 1),
        "state_mb": round(memory[:, 1].max().item(), 1),
    }


def _check_same_global_batch(saved: TrainerState, examples_per_step: int, dist: Dist) -> None:
    """A step's examples depend on how many there are per step: a resumed run must keep that number."""
    if saved.examples_per_step and saved.examples_per_step != examples_per_step:
        raise TunesmithError(
            f"--resume: the checkpoint took {saved.examples_per_step} examples per step ({saved.world_size} "
            f"processes); this run would take {examples_per_step} ({dist.world_size} processes x train.batch_size "
            "x train.grad_accum): change train.grad_accum so the two match"
        )
