"""The encoder recipe: setup, one visible training loop, save; `mlm`, `contrastive` or `classification`.

Same conventions as the decoder recipe (train/recipe.py) and the same helpers: optimizer and
schedule, early stopping on validation loss, atomic resumable checkpoints, the best weights exported
rather than the last, progress on stderr and metrics.jsonl. What differs is only the task
(encoders/tasks.py): its examples, its head and its loss.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import torch

from tunesmith.config import Config
from tunesmith.data.batching import epoch_order
from tunesmith.encoders.export import save_encoder
from tunesmith.encoders.model import Encoder, load_encoder, set_dropout
from tunesmith.encoders.tasks import ClassificationTask, ContrastiveTask, EncoderTask, MaskedLMTask
from tunesmith.errors import TunesmithError
from tunesmith.export import save_adapter
from tunesmith.models.vocabulary import Added, add_domain_words, grow_embeddings
from tunesmith.paths import atomic_file
from tunesmith.precision import autocast, default_device
from tunesmith.progress import TrainProgress, peak_rss_mb
from tunesmith.runfolder import HEAD_FILE, MERGED, TRAIN_ACCURACY, TRAIN_LOSS, VAL_ACCURACY, VAL_LOSS
from tunesmith.train.recipe import attach_method
from tunesmith.train.run import RunSummary, TrainingRun, ValidationObserver, check_out_dir

ENCODER_OBJECTIVES = ("mlm", "contrastive", "classification")
ONE_PROCESS_ONLY = "encoder objectives train on one process: run `tunesmith train` without --nproc-per-node"


def is_encoder_run(cfg: Config) -> bool:
    return cfg.method.objective in ENCODER_OBJECTIVES


def _build_task(cfg: Config, encoder: Encoder, added: Added) -> EncoderTask:
    """The objective's task; the embedding grows by the rows of `added` (the tokenizer has them already)."""
    old_rows = encoder.model.get_input_embeddings().weight.shape[0]
    if cfg.method.objective != "mlm":
        grow_embeddings(encoder.model, added, old_rows)
        task_class = ContrastiveTask if cfg.method.objective == "contrastive" else ClassificationTask
        return task_class(cfg, encoder)
    from transformers import AutoModelForMaskedLM

    # A sentence-embedding checkpoint has no MLM head: transformers ties the head's output matrix
    # to the word embeddings and initialises its small transform, which then trains in full.
    mlm_model = AutoModelForMaskedLM.from_pretrained(encoder.path, dtype=torch.float32)
    grow_embeddings(mlm_model, added, old_rows)  # the tied output rows (and their biases) with it
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
def evaluate_loss(task: EncoderTask, body, cfg: Config, device) -> dict:
    """Validation loss per loss term, and accuracy (masked tokens, texts or queries)."""
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
    return {VAL_LOSS: total / max(count, 1), VAL_ACCURACY: correct / max(count, 1)}


def train_encoder(
    cfg: Config, resume: bool = False, overwrite: bool = False, on_validation: ValidationObserver | None = None
) -> RunSummary:
    out_dir = Path(cfg.out_dir)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # started by torchrun: refuse on every process
        raise TunesmithError(ONE_PROCESS_ONLY)
    if cfg.train.lr == "auto":
        raise TunesmithError(
            "train.lr: auto (the LR range test) is for decoder runs: set a number for encoder objectives"
        )
    check_out_dir(out_dir, resume, overwrite)

    # ---- setup: everything that can fail on bad input happens before out_dir is touched ----
    encoder = load_encoder(cfg.model, cfg.encoder.max_seq_len)
    # Domain words before any text is tokenized; the same ids again on resume (the config is the same).
    added = add_domain_words(encoder.tokenizer, cfg.tokenizer)
    task = _build_task(cfg, encoder, added)
    if cfg.encoder.dropout is not None:
        set_dropout(encoder.model, cfg.encoder.dropout)
    if not task.validation:
        raise TunesmithError("no validation data: give data.validation or a data.val_fraction > 0")
    steps_per_epoch = math.ceil(len(task.train) / (cfg.train.batch_size * cfg.train.grad_accum))
    total_steps = cfg.train.max_steps or max(1, math.ceil(cfg.train.epochs * steps_per_epoch))
    device = default_device()
    torch.manual_seed(cfg.train.seed)
    body = attach_method(encoder.model, cfg, "FEATURE_EXTRACTION", token_ids=added.ids).to(device)
    head = task.head.to(device)
    _train_head(head, body)
    # One module holds everything trained, so checkpoints and the best weights cover the head too.
    trained = torch.nn.ModuleDict({"body": body, "head": head})
    body.train()
    params = [p for p in trained.parameters() if p.requires_grad]
    run = TrainingRun(cfg, trained, params, steps_per_epoch, total_steps, resume, on_validation=on_validation)
    if not resume:
        run.log({**run.record(0), **evaluate_loss(task, body, cfg, device)})

    # ---- the loop ----
    with TrainProgress(total_steps, run.state.step) as progress:
        progress.say(task.summary())
        progress.say(
            f"training {cfg.model} ({cfg.method.objective}, {cfg.method.name}) for {total_steps} steps, "
            f"{steps_per_epoch} steps/epoch"
        )
        _loop(run, task, body, device, progress)

    # ---- save: the best weights, not the last ----
    run.restore_best()
    if cfg.method.lora:
        save_adapter(body, out_dir, encoder.tokenizer)
        body = body.merge_and_unload()
    encoder.model = body
    save_encoder(encoder, out_dir / MERGED)
    if isinstance(task, ClassificationTask):
        _save_head(head, task.labels, out_dir / HEAD_FILE)
    return run.finish()


def _step_batches(task: EncoderTask, cfg: Config, step: int, steps_per_epoch: int) -> tuple[int, list]:
    """(examples, prepared micro-batches) of optimizer step `step` (1-based), a pure function of it."""
    per_step, size = cfg.train.batch_size * cfg.train.grad_accum, cfg.train.batch_size
    epoch, index = divmod(step - 1, steps_per_epoch)
    # The order is not length-grouped: varied batches make better negatives.
    order = epoch_order([0] * len(task.train), per_step, cfg.train.seed, epoch, False)
    chosen = order[index * per_step : (index + 1) * per_step]
    return len(chosen), [
        task.prepare([task.train[i] for i in chosen[j : j + size]], _generator(cfg.train.seed, step, j))
        for j in range(0, len(chosen), size)
    ]


def _loop(run: TrainingRun, task: EncoderTask, body, device, progress) -> None:
    cfg = run.cfg
    window = dict.fromkeys(("loss", "count", "correct", "examples", "tokens", "seconds"), 0)
    for step in range(run.state.step + 1, run.total_steps + 1):
        step_start = time.perf_counter()
        examples, prepared = _step_batches(task, cfg, step, run.steps_per_epoch)
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
        window["examples"] += examples
        run.state.trained_tokens += sum(p.tokens for p in prepared)
        grad_norm, lr = run.optimizer_step()
        window["seconds"] += time.perf_counter() - step_start

        record = None
        if run.logs_at(step):
            seconds = max(window["seconds"], 1e-9)
            record = {
                **run.record(step),
                TRAIN_LOSS: window["loss"] / max(window["count"], 1),
                TRAIN_ACCURACY: window["correct"] / max(window["count"], 1),
                "lr": lr,
                "examples_per_second": window["examples"] / seconds,
                "tokens_per_second": window["tokens"] / seconds,
                "grad_norm": float(grad_norm),
                "peak_rss_mb": round(peak_rss_mb(), 1),
                "trained_tokens": run.state.trained_tokens,
            }
            progress.advance(step, record[TRAIN_LOSS], lr, record["tokens_per_second"])
            window = dict.fromkeys(window, 0)
        else:
            progress.advance(step)
        if run.end_step(step, record, lambda: evaluate_loss(task, body, cfg, device), progress):
            break


def _save_head(head: torch.nn.Module, labels: list[str], path: Path) -> None:
    """The classification head and its labels, in one safetensors file."""
    from safetensors.torch import save

    with atomic_file(path) as fh:
        fh.write(save({k: v.contiguous() for k, v in head.state_dict().items()}, {"labels": json.dumps(labels)}))
