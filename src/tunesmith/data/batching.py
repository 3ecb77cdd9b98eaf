"""Example order and micro-batch layout: padded rows or packed rows.

A micro-batch is always the same *examples* whichever layout is used, so packing changes the
compute, never the optimisation: a packed run and a padded run see the same batches.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from tunesmith.data.tokenize import IGNORE_INDEX, TokenizedExample

# Sorting by length inside windows of this many batches keeps padding low while the order of
# the batches themselves stays random.
LENGTH_GROUP_WINDOW = 64


@dataclass
class Batch:
    input_ids: torch.Tensor  # [rows, seq]
    targets: torch.Tensor  # [rows, seq] next-token labels, IGNORE_INDEX where no loss
    attention_mask: torch.Tensor | None  # padded layout only
    position_ids: torch.Tensor | None  # packed layout only: restarts at 0 for every example
    n_tokens: int  # real tokens, padding excluded
    n_label_tokens: int


def shifted_targets(labels: list[int]) -> list[int]:
    """Position t predicts token t+1; the last position of an example predicts nothing."""
    return labels[1:] + [IGNORE_INDEX]


def epoch_order(lengths: list[int], batch_size: int, seed: int, epoch: int, group_by_length: bool) -> list[int]:
    """The example order of one epoch: a pure function of (seed, epoch), so resume is exact."""
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if not group_by_length:
        return order
    window = batch_size * LENGTH_GROUP_WINDOW
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i], reverse=True)
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    # Only full batches are shuffled: a short one mid-epoch would shift every later slice of the
    # order across two length groups, so it goes last.
    full = [b for b in batches if len(b) == batch_size]
    rng.shuffle(full)
    return [i for batch in full + [b for b in batches if len(b) < batch_size] for i in batch]


def pad_batch(examples: list[TokenizedExample], pad_id: int) -> Batch:
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    targets = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        targets[row, :n] = torch.tensor(shifted_targets(e.labels))
        mask[row, :n] = 1
    return Batch(ids, targets, mask, None, int(mask.sum()), int((targets != IGNORE_INDEX).sum()))


def _first_fit_rows(examples: list[TokenizedExample], row_len: int) -> list[list[TokenizedExample]]:
    rows: list[list[TokenizedExample]] = []
    room: list[int] = []
    for e in sorted(examples, key=lambda e: len(e.input_ids), reverse=True):
        n = len(e.input_ids)
        slot = next((i for i, free in enumerate(room) if free >= n), None)
        if slot is None:
            rows.append([e])
            room.append(row_len - n)
        else:
            rows[slot].append(e)
            room[slot] -= n
    return rows


def pack_batch(examples: list[TokenizedExample], pad_id: int, row_len: int) -> Batch:
    """Pack examples into as few rows of at most row_len tokens as first-fit allows.

    No attention mask is passed: transformers reads example boundaries from position_ids that
    restart at 0 and blocks attention across them. Row tails are filled with a padding "example"
    of its own positions, so it is also walled off and carries no labels.
    """
    rows = _first_fit_rows(examples, row_len)
    width = max(sum(len(e.input_ids) for e in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    targets = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    n_tokens = 0
    for r, row in enumerate(rows):
        at = 0
        for e in row:
            n = len(e.input_ids)
            ids[r, at : at + n] = torch.tensor(e.input_ids)
            targets[r, at : at + n] = torch.tensor(shifted_targets(e.labels))
            positions[r, at : at + n] = torch.arange(n)
            at += n
        positions[r, at:] = torch.arange(width - at)
        n_tokens += at
    return Batch(ids, targets, None, positions, n_tokens, int((targets != IGNORE_INDEX).sum()))


def make_batch(examples: list[TokenizedExample], pad_id: int, packing: bool, row_len: int) -> Batch:
    return pack_batch(examples, pad_id, row_len) if packing else pad_batch(examples, pad_id)
