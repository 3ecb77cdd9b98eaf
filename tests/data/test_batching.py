import random

import pytest
import torch

from tunesmith.data.batching import ROW_MULTIPLE, epoch_order, make_batch, pack_batch, pad_batch
from tunesmith.data.tokenize import IGNORE_INDEX, TokenizedExample

PAD = 0


def _examples(n: int, seed: int = 0, low: int = 40, high: int = 130) -> list[TokenizedExample]:
    """E2E-like chat examples: a prompt without labels, then a labelled completion."""
    rng = random.Random(seed)
    out = []
    for line in range(n):
        length = rng.randint(low, high)
        ids = [rng.randint(1, 999) for _ in range(length)]
        prompt = length * 2 // 3
        out.append(TokenizedExample(ids, [IGNORE_INDEX] * prompt + ids[prompt:], line, length))
    return out


def _padding(lengths: list[int], order: list[int], batch_size: int) -> int:
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)


@pytest.mark.parametrize("n, batch_size", [(1, 8), (7, 8), (100, 8), (1000, 3), (5000, 8)])
@pytest.mark.parametrize("group_by_length", [False, True])
def test_epoch_order_is_a_deterministic_permutation(n, batch_size, group_by_length):
    lengths = [len(e.input_ids) for e in _examples(n)]

    def order(seed, epoch):
        return epoch_order(lengths, batch_size, seed=seed, epoch=epoch, group_by_length=group_by_length).tolist()

    assert sorted(order(1, 2)) == list(range(n))
    assert order(1, 2) == order(1, 2)
    if n >= 100:
        assert order(1, 2) != order(1, 3)
        assert order(1, 2) != order(2, 2)


@pytest.mark.parametrize(
    "n, batch_size",
    [
        (1000, 8),
        (4488, 8),  # the shipped E2E train set: no short batch
        (100, 8),  # a short last batch: it must stay last
        (1000, 32),
    ],
)
def test_length_grouping_cuts_padding(n, batch_size):
    """Padding as the recipe meets it: the order cut into consecutive batch_size slices."""
    lengths = [len(e.input_ids) for e in _examples(n)]
    grouped = _padding(lengths, epoch_order(lengths, batch_size, 0, 0, group_by_length=True), batch_size)
    shuffled = _padding(lengths, epoch_order(lengths, batch_size, 0, 0, group_by_length=False), batch_size)
    assert grouped < 0.25 * shuffled


def test_length_grouping_keeps_the_order_of_batches_random():
    """Grouping must not turn an epoch into a long-to-short curriculum."""
    lengths = [len(e.input_ids) for e in _examples(2000)]
    order = epoch_order(lengths, 8, 0, 0, group_by_length=True)
    firsts = [lengths[order[i]] for i in range(0, len(order), 8)]
    assert firsts != sorted(firsts, reverse=True) and firsts != sorted(firsts)


@pytest.mark.parametrize("n", [1, 3, 8, 16])
def test_packed_row_holds_every_example_once_with_positions_restarting(n):
    examples = _examples(n, seed=n)
    packed = pack_batch(examples, PAD)
    real = sum(len(e.input_ids) for e in examples)
    width = packed.input_ids.shape[1]
    assert packed.attention_mask is None and packed.input_ids.shape[0] == 1
    assert width % ROW_MULTIPLE == 0 and real <= width < real + ROW_MULTIPLE
    assert packed.n_tokens == real
    assert packed.lengths[:n] == [len(e.input_ids) for e in examples] and sum(packed.lengths) == width
    at = 0
    for e in examples:
        n_tokens = len(e.input_ids)
        assert packed.input_ids[0, at : at + n_tokens].tolist() == e.input_ids
        assert packed.position_ids[0, at : at + n_tokens].tolist() == list(range(n_tokens))
        # The last position of an example predicts nothing: never the next example's first token.
        assert packed.targets[0, at : at + n_tokens].tolist() == e.labels[1:] + [IGNORE_INDEX]
        at += n_tokens
    # The padding tail is a segment of its own with no labels.
    assert packed.input_ids[0, at:].eq(PAD).all() and packed.targets[0, at:].eq(IGNORE_INDEX).all()
    assert packed.position_ids[0, at:].tolist() == list(range(width - at))


@pytest.mark.parametrize("packing", [False, True])
def test_both_layouts_count_the_same_tokens(packing):
    examples = _examples(8)
    batch = make_batch(examples, PAD, packing)
    assert batch.n_tokens == sum(len(e.input_ids) for e in examples)
    assert batch.n_label_tokens == sum(sum(x != IGNORE_INDEX for x in e.labels[1:]) for e in examples)
    assert batch.n_label_tokens == int((batch.targets != IGNORE_INDEX).sum())


def test_padded_rows_are_masked_and_labelled_like_the_examples():
    examples = _examples(4)
    batch = pad_batch(examples, PAD)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        assert batch.attention_mask[row].tolist() == [1] * n + [0] * (batch.input_ids.shape[1] - n)
        assert batch.input_ids[row, :n].tolist() == e.input_ids
        assert (batch.targets[row, n - 1 :] == IGNORE_INDEX).all()
    assert batch.position_ids is None and batch.targets.dtype == torch.long
