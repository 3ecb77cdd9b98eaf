"""What a training step minimises and reports: the one hook the recipe calls per micro-batch.

The recipe owns the loop (step order, accumulation, processes, clipping, checkpoints, early
stopping on `val_loss`); an objective owns the micro-batch layout, the loss of a micro-batch, and
the names and values of its metrics. Supervised fine-tuning is `SFTObjective`; preference tuning
is `train.dpo.DPOObjective`; reinforcement with a grader `train.grpo.GRPOObjective`.

An objective's loss is normalised by counts of the whole step on all processes (`counts`), which
every process knows without asking: a step's examples are a pure function of the step. Its
metrics are sums (`forward`'s second value) that the recipe adds up over micro-batches and
processes, then divides by the same counts (`metrics`).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import torch

from tunesmith.config import Config
from tunesmith.data.batching import Batch, make_batch
from tunesmith.data.tokenize import IGNORE_INDEX, TokenizedExample
from tunesmith.errors import TunesmithError
from tunesmith.precision import autocast
from tunesmith.runfolder import ACCURACY, LOSS, VAL, metric_name
from tunesmith.train.distributed import ONE_PROCESS, LossModule
from tunesmith.train.loss import labelled_loss


@runtime_checkable
class Objective(Protocol):
    """What the recipe asks of an objective (SFTObjective, train.dpo.DPOObjective, train.grpo.GRPOObjective)."""

    sums: tuple[str, ...]  # names of the sums `forward` returns, in order
    step_counts: list[int]  # the current step's counts, set by `start_step`
    device: torch.device

    def check(self, data) -> None:
        """Refuse data this objective cannot train on (TunesmithError)."""

    def setup(self, model, data) -> None:
        """Work before the first step, on the whole unwrapped model."""

    def sizes(self, items) -> tuple[np.ndarray, np.ndarray]:
        """(tokens, label tokens) of each training item."""

    def sequence_lengths(self, items) -> np.ndarray:
        """The lengths of the sequences a forward attends over (for the FLOPs count)."""

    def counts(self, items: list) -> list[int]:
        """The counts the loss and metrics of `items` are normalised by."""

    def batch(self, items: list) -> Batch:
        """One micro-batch of `items` (a padding-only one when there are none)."""

    def start_step(self, items: list) -> None:
        """Take the whole step's counts (`counts` of all its items) before its micro-batches."""

    def forward(self, model, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(the step-normalised loss of one micro-batch, its metric sums)."""

    def metrics(self, sums: list[float], counts: list[int], prefix: str) -> dict:
        """The named metrics (``{prefix}_loss`` first) of summed `sums` and `counts`."""


def to_device(batch: Batch, device) -> Batch:
    if device.type == "cpu":
        return batch
    for name in ("input_ids", "targets", "attention_mask", "position_ids"):
        value = getattr(batch, name)
        if value is not None:
            setattr(batch, name, value.to(device, non_blocking=True))
    return batch


def label_count(example: TokenizedExample) -> int:
    """Label tokens as the shifted targets count them (batching.shifted_targets): the first token predicts nothing."""
    return sum(label != IGNORE_INDEX for label in example.labels[1:])


def unlabelled(pad_id: int) -> TokenizedExample:
    """For a process left without examples (a short last step, the last validation batches): it
    still runs a forward, as FSDP2's collectives need every process, on one padding token without
    labels, adding nothing to loss or gradient."""
    return TokenizedExample([pad_id], [IGNORE_INDEX], 0, 1)


class SFTObjective:
    """Cross-entropy on label tokens, normalised by the label tokens of the whole step, so every
    label token weighs the same however the examples fall into micro-batches and processes."""

    sums = (LOSS, ACCURACY)

    def __init__(self, cfg: Config, pad_id: int, device):
        self.cfg, self.pad_id, self.device = cfg, pad_id, device
        self.step_counts = [0]

    def check(self, data) -> None:
        if data.pairs:
            raise TunesmithError(f"{self.cfg.data.train} holds preference pairs: train on them with method.name=dpo")

    def setup(self, model, data) -> None:
        """Work before the first step (nothing for SFT)."""

    def sizes(self, items) -> tuple[np.ndarray, np.ndarray]:
        """Tokens and (shifted) label tokens of each example of a view (data/views.py)."""
        return items.lengths, items.shifted_label_counts

    def sequence_lengths(self, items) -> np.ndarray:
        return items.lengths

    def counts(self, items: list[TokenizedExample]) -> list[int]:
        return [sum(label_count(e) for e in items)]

    def batch(self, items: list[TokenizedExample]) -> Batch:
        return make_batch(items or [unlabelled(self.pad_id)], self.pad_id, self.cfg.data.packing)

    def start_step(self, items: list[TokenizedExample]) -> None:
        self.step_counts = self.counts(items)

    def forward(self, model, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        train = self.cfg.train
        parts = labelled_loss(model, to_device(batch, self.device), train.loss_chunk_size, train.fast_paths)
        sums = torch.stack([parts.loss_sum.detach().float(), parts.n_correct.float()])
        return parts.loss_sum / max(self.step_counts[0], 1), sums

    def metrics(self, sums: list[float], counts: list[int], prefix: str) -> dict:
        labels = max(counts[0], 1)
        return {metric_name(prefix, LOSS): sums[0] / labels, metric_name(prefix, ACCURACY): sums[1] / labels}


@torch.no_grad()
def evaluate(module, objective, items: list, cfg: Config, dist) -> dict:
    """Validation metrics (`val_*`) of `items`; the processes share the batches and add up their sums.

    `module` is the (possibly DDP/FSDP2-wrapped) LossModule: FSDP2 gathers each layer's weights in
    its forward, so every process runs as many forwards, an empty batch where it has nothing left.
    """
    was_training = module.training
    module.eval()
    order = np.argsort(objective.sizes(items)[0], kind="stable")
    size = cfg.train.batch_size
    starts = list(range(0, len(order), size))
    rounds = -(-len(starts) // dist.world_size)
    n_sums = len(objective.sums)
    totals = torch.zeros(n_sums + len(objective.step_counts), dtype=torch.float64)  # sums, then counts
    for round_ in range(rounds):
        index = round_ * dist.world_size + dist.rank
        chosen = [items[i] for i in order[starts[index] : starts[index] + size]] if index < len(starts) else []
        with autocast(cfg.train.dtype, objective.device):
            _, batch_sums = module(objective.batch(chosen))
        totals[:n_sums] += batch_sums.cpu().double()
        totals[n_sums:] += torch.tensor(objective.counts(chosen), dtype=torch.float64)
    module.train(was_training)
    totals = dist.sum(totals).tolist()
    return objective.metrics(totals[:n_sums], [round(c) for c in totals[n_sums:]], VAL)


def evaluate_model(model, objective, items: list, cfg: Config) -> dict:
    """`evaluate` of a bare model in one process (benchmarks, tests)."""
    return evaluate(LossModule(model, objective), objective, items, cfg, ONE_PROCESS)
