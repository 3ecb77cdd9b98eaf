"""Example order and micro-batch layout: padded rows or one packed row.

A micro-batch is always the same *examples* whichever layout is used, so packing changes the
compute, never the optimisation: a packed run and a padded run see the same batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tunesmith.data.tokenize import IGNORE_INDEX, TokenizedExample

# Sorting by length inside windows of this many batches keeps padding low while the order of
# the batches themselves stays random.
LENGTH_GROUP_WINDOW = 64

# Packed rows are padded to a multiple of ROW_MULTIPLE tokens, padded rows to one of WIDTH_MULTIPLE.
# Every new shape makes oneDNN (bf16 matmuls on CPU) build and cache new kernels: with a different
# length every step, memory grew by ~18 MB a step for SmolLM2-135M, and each step paid the builds.
ROW_MULTIPLE = 64
WIDTH_MULTIPLE = 8


@dataclass
class Batch:
    input_ids: torch.Tensor  # [rows, seq]
    targets: torch.Tensor  # [rows, seq] next-token labels, IGNORE_INDEX where no loss
    attention_mask: torch.Tensor | None  # padded layout only
    position_ids: torch.Tensor | None  # packed layout only: restarts at 0 for every example
    n_tokens: int  # real tokens, padding excluded
    n_label_tokens: int
    lengths: list[int] | None = None  # packed layout only: segment lengths in row order (examples, padding tail)
    # Packed layout with shared prefixes only: the segment each segment continues, or -1 (attention.segments).
    parents: list[int] | None = None


def shifted_targets(labels: list[int]) -> list[int]:
    """Position t predicts token t+1; the last position of an example predicts nothing."""
    return labels[1:] + [IGNORE_INDEX]


def epoch_order(lengths, batch_size: int, seed: int, epoch: int, group_by_length: bool) -> np.ndarray:
    """The example order of one epoch: a pure function of (seed, epoch), so resume is exact.

    numpy throughout: a Python shuffle of a million indices took 1.5 s before every run's first step.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    if not group_by_length:
        return order
    window = batch_size * LENGTH_GROUP_WINDOW
    lengths = np.asarray(lengths)
    batches = []
    for start in range(0, len(order), window):
        chunk = order[start : start + window]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]  # longest first
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    # Only full batches are shuffled: a short one mid-epoch would shift every later slice of the
    # order across two length groups, so it goes last.
    full = [b for b in batches if len(b) == batch_size]
    short = [b for b in batches if len(b) < batch_size]
    shuffled = [full[i] for i in rng.permutation(len(full))]
    return np.concatenate(shuffled + short) if batches else order


def pad_batch(examples: list[TokenizedExample], pad_id: int) -> Batch:
    longest = max(len(e.input_ids) for e in examples)
    width = -(-longest // WIDTH_MULTIPLE) * WIDTH_MULTIPLE
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    targets = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        targets[row, :n] = torch.tensor(shifted_targets(e.labels))
        mask[row, :n] = 1
    return Batch(ids, targets, mask, None, int(mask.sum()), int((targets != IGNORE_INDEX).sum()))


def pack_batch(examples: list[TokenizedExample], pad_id: int) -> Batch:
    """All examples back to back in one row, padded to a multiple of ROW_MULTIPLE tokens.

    Example boundaries travel as `lengths`, which tunesmith's packed attention uses to keep each
    example attending only to itself; positions restart at 0 for every example. The padding tail
    is one more segment, walled off like an example and carrying no labels. The prompt tokens all
    examples begin with (a system prompt, a task instruction) are placed once: see `pack_groups`.
    """
    return pack_groups([[e] for e in examples], pad_id)


def shareable_prefix(examples: list[TokenizedExample], start: int = 0) -> int:
    """The end of the tokens that every example holds from `start` on and that predict no label:
    never past the token before an example's first label, which predicts that label (its target
    differs between the examples)."""
    limit = min(next((i for i, label in enumerate(e.labels) if label != IGNORE_INDEX), len(e.labels)) for e in examples)
    end, first = start, examples[0].input_ids
    while end < limit - 1 and all(e.input_ids[end] == first[end] for e in examples[1:]):
        end += 1
    return end


def pack_groups(groups: list[list[TokenizedExample]], pad_id: int) -> Batch:
    """`pack_batch` for groups of examples that may share a prompt (a DPO pair's two answers). What
    every example begins with is placed once, then each group's own shared prompt once, then each
    example's tail: a prefix is a segment of its own that what follows continues (`Batch.parents`;
    attention.segments attends each example to its prefixes and itself, as if they were copied),
    and positions run on from the prefix into the tails. Outputs and gradients are those of
    separate examples; the prefixes' tokens are computed once instead of once per example."""
    examples = [e for group in groups for e in group]
    common = shareable_prefix(examples) if len(examples) > 1 else 0
    ids, targets, positions, lengths, parents = [], [], [], [], []

    def place(tokens: list[int], labels: list[int] | None, start: int, parent: int) -> int:
        ids.extend(tokens)
        targets.extend(shifted_targets(labels)[start:] if labels else [IGNORE_INDEX] * len(tokens))
        positions.extend(range(start, start + len(tokens)))
        lengths.append(len(tokens))
        parents.append(parent)
        return len(lengths) - 1

    root = place(examples[0].input_ids[:common], None, 0, -1) if common else -1
    for group in groups:
        shared, parent = common, root
        if len(group) > 1 and (shared := shareable_prefix(group, common)) > common:
            parent = place(group[0].input_ids[common:shared], None, common, root)
        for e in group:
            place(e.input_ids[shared:], e.labels, shared, parent)
    n_tokens = len(ids)
    tail = -n_tokens % ROW_MULTIPLE
    if tail:
        place([pad_id] * tail, None, 0, -1)
    ids, targets, positions = (torch.tensor(t)[None] for t in (ids, targets, positions))
    n_labels = int((targets != IGNORE_INDEX).sum())
    shares = any(p >= 0 for p in parents)
    return Batch(ids, targets, None, positions, n_tokens, n_labels, lengths, parents if shares else None)


def make_batch(examples: list[TokenizedExample], pad_id: int, packing: bool) -> Batch:
    return pack_batch(examples, pad_id) if packing else pad_batch(examples, pad_id)
