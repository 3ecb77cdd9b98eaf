"""A packed row must compute exactly what its examples compute one by one.

transformers 5 reads example boundaries from position_ids that restart at 0 (no attention mask is
passed) and blocks attention across them; if it ever stopped doing so, the packed losses would
pick up context from neighbouring examples and these tests would fail.
"""

import pytest
import torch
import torch.nn.functional as F

from tunesmith.data.batching import make_batch
from tunesmith.data.formats import read_examples
from tunesmith.data.tokenize import IGNORE_INDEX, tokenize_examples
from tunesmith.models import load_model
from tunesmith.train.loss import labelled_loss


@pytest.fixture(scope="module")
def examples(small_e2e, smol_tokenizer):
    loaded = read_examples(small_e2e / "train.jsonl")
    return tokenize_examples(smol_tokenizer, loaded.examples[:4], max_seq_len=128)


@pytest.fixture(scope="module")
def pad_id(smol_tokenizer):
    return smol_tokenizer.pad_token_id


@pytest.fixture(scope="module")
def tiny(tiny_model_name):
    model = load_model(tiny_model_name).model
    model.eval()
    return model


def _per_token_loss(model, batch, use_cache: bool = False) -> torch.Tensor:
    """The plain path: full logits, cross-entropy at every position (0 where there is no label)."""
    logits = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        use_cache=use_cache,
    ).logits
    return F.cross_entropy(logits.transpose(1, 2).float(), batch.targets, reduction="none")


def _loss_by_example(model, batch, use_cache: bool = False) -> dict[tuple[int, ...], float]:
    """Mean loss per label token of each example of a packed batch, keyed by its token ids."""
    losses = _per_token_loss(model, batch, use_cache)
    found = {}
    for row in range(batch.input_ids.shape[0]):
        starts = (batch.position_ids[row] == 0).nonzero().flatten().tolist() + [batch.input_ids.shape[1]]
        for a, b in zip(starts, starts[1:], strict=False):
            n_labels = int((batch.targets[row, a:b] != IGNORE_INDEX).sum())
            if n_labels:  # the padding tail has none
                found[tuple(batch.input_ids[row, a:b].tolist())] = losses[row, a:b].sum().item() / n_labels
    return found


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("row_len", [128, 400])  # one example per row / several per row
@torch.no_grad()
def test_packed_losses_equal_one_by_one(tiny, examples, pad_id, attention, row_len):
    tiny.set_attn_implementation(attention)
    packed = make_batch(examples, pad_id, packing=True, row_len=row_len)
    if row_len == 400:
        assert packed.input_ids.shape[0] < len(examples), "the test must put several examples in a row"
    by_example = _loss_by_example(tiny, packed)
    assert len(by_example) == len(examples)
    for e in examples:
        alone = _loss_by_example(tiny, make_batch([e], pad_id, packing=True, row_len=len(e.input_ids)))
        assert by_example[tuple(e.input_ids)] == pytest.approx(alone[tuple(e.input_ids)], abs=1e-4)


@torch.no_grad()
def test_the_check_sees_cross_example_attention(tiny, examples, pad_id):
    """A KV cache switches off transformers' packed-sequence detection, so attention then crosses
    examples: the per-example losses must move by far more than the tolerance above. (This is why
    the loss calls the decoder with use_cache=False.)"""
    tiny.set_attn_implementation("sdpa")
    packed = make_batch(examples, pad_id, packing=True, row_len=400)
    isolated = _loss_by_example(tiny, packed)
    leaked = _loss_by_example(tiny, packed, use_cache=True)
    moved = [abs(leaked[ids] - loss) for ids, loss in isolated.items()]
    assert max(moved) > 1e-3


@pytest.mark.parametrize("chunk_size", [7, 1024])
@torch.no_grad()
def test_labelled_loss_of_packed_and_padded_batches_agree(tiny, examples, pad_id, chunk_size):
    tiny.set_attn_implementation("sdpa")
    packed = labelled_loss(tiny, make_batch(examples, pad_id, True, 400), chunk_size)
    padded = labelled_loss(tiny, make_batch(examples, pad_id, False, 400), chunk_size)
    assert packed.n_label_tokens == padded.n_label_tokens
    assert packed.loss_sum.item() == pytest.approx(padded.loss_sum.item(), rel=1e-5)
    assert int(packed.n_correct) == int(padded.n_correct)
