"""Train and validation sets as views of a token store: index arrays, not lists of examples.

A view answers what batching and the reports ask (how many, each one's length and label tokens,
one example's ids and labels, gathered from the memory map on demand) with numpy arrays, so an
epoch's order over a million examples costs arrays, not a million Python objects.
"""

from __future__ import annotations

import numpy as np

from tunesmith.data.store import TokenStore
from tunesmith.data.tokenize import IGNORE_INDEX, TokenizedExample


class ExampleView:
    """Chat examples of a store, in file order (`index`: their positions in the store)."""

    def __init__(self, store: TokenStore, index: np.ndarray):
        self.store, self.index = store, index
        arrays = store.arrays
        self.lengths = np.asarray(arrays["lengths"][index], dtype=np.int64)
        self.label_counts = np.asarray(arrays["label_counts"][index], dtype=np.int64)
        self.lines = np.asarray(arrays["lines"][index])
        self.file_index = np.asarray(arrays["file_index"][index])
        # What the duplicate and overlap checks compare: one content hash per example.
        self.hashes, self.hash_lines, self.hash_files = np.asarray(arrays["hashes"][index]), self.lines, self.file_index

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> TokenizedExample:
        return self.store.example(int(self.index[i]))

    @property
    def shifted_label_counts(self) -> np.ndarray:
        """Label tokens as the shifted targets count them (batching.shifted_targets): the first predicts nothing."""
        first = self.store.offsets[self.index]
        return self.label_counts - self.store.arrays["label_mask"][first].astype(np.int64)


class TextBlocks:
    """Raw-text documents of a store packed back to back (an eos between them) into blocks of
    `block` tokens: packing wastes no compute on padding, and the eos tells the model where one
    document ends, so it does not learn to run one into the next. Every token is a label but a
    document's BOS (data/tokenize.text_labels)."""

    def __init__(self, store: TokenStore, index: np.ndarray, block: int):
        self.store, self.index, self.block = store, index, block
        doc_lengths = np.asarray(store.arrays["lengths"][index], dtype=np.int64)
        self.starts = np.zeros(len(index) + 1, dtype=np.int64)  # of each document in the packed stream
        np.cumsum(doc_lengths, out=self.starts[1:])
        total = int(self.starts[-1])
        n = -(-total // block)
        self.lengths = np.full(n, block, dtype=np.int64)
        if n:
            self.lengths[-1] = total - (n - 1) * block
        unlabelled = self._unlabelled(store, index, doc_lengths)
        self.label_counts = self.lengths - np.bincount(unlabelled // block, minlength=n)
        # The first token of a block predicts nothing: it counts as a shifted target only if unlabelled already.
        self.shifted_label_counts = self.label_counts - ~np.isin(np.arange(n, dtype=np.int64) * block, unlabelled)
        owner = np.searchsorted(self.starts, np.arange(n, dtype=np.int64) * block, side="right") - 1
        self.lines = np.asarray(store.arrays["lines"][index[owner]]) if n else np.zeros(0, np.int64)
        self.file_index = np.asarray(store.arrays["file_index"][index[owner]]) if n else np.zeros(0, np.int32)
        # Duplicates and overlap are checked per document, not per block.
        self.hashes = np.asarray(store.arrays["hashes"][index])
        self.hash_lines = np.asarray(store.arrays["lines"][index])
        self.hash_files = np.asarray(store.arrays["file_index"][index])

    def _unlabelled(self, store: TokenStore, index: np.ndarray, doc_lengths: np.ndarray) -> np.ndarray:
        """Positions in the packed stream of the tokens that are not labels: in the common case a
        document's first (its BOS), found without reading the documents; any other, by reading that one."""
        offsets = store.offsets[index]
        missing = doc_lengths - np.asarray(store.arrays["label_counts"][index], dtype=np.int64)
        at_start = (missing == 1) & (store.arrays["label_mask"][offsets] == 0)
        positions = [self.starts[:-1][at_start]]
        for doc in np.flatnonzero((missing > 0) & ~at_start):
            mask = store.arrays["label_mask"][offsets[doc] : offsets[doc] + doc_lengths[doc]]
            positions.append(self.starts[doc] + np.flatnonzero(mask == 0))
        return np.sort(np.concatenate(positions))

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> TokenizedExample:
        begin, end = i * self.block, i * self.block + int(self.lengths[i])
        doc = int(np.searchsorted(self.starts, begin, side="right")) - 1
        ids, masks = [], []
        while begin < end:
            offset = int(self.store.offsets[self.index[doc]])
            lo, hi = begin - int(self.starts[doc]), min(end, int(self.starts[doc + 1])) - int(self.starts[doc])
            ids.append(self.store.arrays["tokens"][offset + lo : offset + hi])
            masks.append(self.store.arrays["label_mask"][offset + lo : offset + hi])
            begin += hi - lo
            doc += 1
        tokens = np.concatenate(ids).astype(np.int64)
        labels = np.where(np.concatenate(masks) != 0, tokens, IGNORE_INDEX)
        return TokenizedExample(tokens.tolist(), labels.tolist(), int(self.lines[i]), len(tokens))


def view(store: TokenStore, index: np.ndarray, max_seq_len: int):
    if store.meta["format"] == "text":
        return TextBlocks(store, index, max_seq_len)
    return ExampleView(store, index)


class Listed:
    """Tokenized examples held in memory (tests, preference pairs) behind the same interface."""

    def __init__(self, examples: list[TokenizedExample]):
        self.examples = examples
        self.lengths = np.array([len(e.input_ids) for e in examples], dtype=np.int64)
        self.label_counts = np.array([sum(x != IGNORE_INDEX for x in e.labels) for e in examples], dtype=np.int64)
        self.shifted_label_counts = np.array(
            [sum(x != IGNORE_INDEX for x in e.labels[1:]) for e in examples], dtype=np.int64
        )

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> TokenizedExample:
        return self.examples[i]
