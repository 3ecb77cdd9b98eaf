"""data.replay: general text mixed into the training examples, against forgetting.

The replay text (the `text` format: every token a label, packed into blocks of max_seq_len) is
tokenized into its own token store. Of the mixed set, `fraction` of the examples are replay
blocks: k = round(fraction * n / (1 - fraction)) blocks for n training examples, drawn from a
seeded shuffle of the blocks (cycling through reshuffles when k exceeds them). The mixed set is a
pure function of the data and the seed, so the epoch order the trainer draws from it, and an exact
resume, are unchanged in kind.
"""

from __future__ import annotations

import random

import numpy as np

from tunesmith.config import ReplayConfig


def replay_count(n_train: int, fraction: float) -> int:
    """Replay examples so that they are `fraction` of the mixed set."""
    return round(fraction * n_train / (1.0 - fraction))


def replay_order(n_blocks: int, wanted: int, seed: int) -> list[int]:
    """`wanted` block positions: seeded shuffles of all blocks, one after another."""
    rng, order = random.Random(seed), []
    while len(order) < wanted:
        shuffled = list(range(n_blocks))
        rng.shuffle(shuffled)
        order += shuffled
    return order[:wanted]


class Mixed:
    """Training examples followed by the chosen replay blocks, behind the view interface (data/views.py)."""

    def __init__(self, train, replay, picks: list[int]):
        self.train, self.replay, self.picks = train, replay, np.asarray(picks, dtype=np.int64)
        for name in ("lengths", "label_counts", "shifted_label_counts", "lines", "file_index"):
            setattr(self, name, np.concatenate([getattr(train, name), getattr(replay, name)[self.picks]]))

    def __len__(self) -> int:
        return len(self.train) + len(self.picks)

    def __getitem__(self, i: int):
        n = len(self.train)
        return self.train[i] if i < n else self.replay[int(self.picks[i - n])]

    def is_replay(self, i: int) -> bool:
        return i >= len(self.train)


def mix(train, blocks, spec: ReplayConfig, seed: int) -> tuple[Mixed, str]:
    """The training view with replay blocks (a text view of spec.path) mixed in, and a note for the report."""
    picks = replay_order(len(blocks), replay_count(len(train), spec.fraction), seed)
    note = (
        f"replay: {len(picks):,} blocks of general text from {spec.path} ({len(blocks):,} distinct) mixed into "
        f"{len(train):,} examples (data.replay.fraction {spec.fraction})"
    )
    return Mixed(train, blocks, picks), note
