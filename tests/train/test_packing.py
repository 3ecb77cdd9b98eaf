"""A packed row must compute exactly what its examples compute one by one.

The packed row is all examples back to back; tunesmith's attention (kernels/attention.py) keeps each
example attending only to itself. If it ever let context leak across examples, the per-example
losses would move and these tests would fail.
"""

import pytest
import torch
import torch.nn.functional as F

from tunesmith.data.batching import make_batch
from tunesmith.data.formats import read_examples
from tunesmith.data.tokenize import IGNORE_INDEX, tokenize_examples
from tunesmith.kernels import attention
from tunesmith.kernels.label_loss import output_layer
from tunesmith.models import load_model
from tunesmith.train.loss import hidden_states, labelled_loss


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


def _per_token_loss(model, batch, hidden: torch.Tensor | None = None) -> torch.Tensor:
    hidden = hidden_states(model, batch) if hidden is None else hidden
    logits = output_layer(model)[1](hidden)
    return F.cross_entropy(logits.transpose(1, 2).float(), batch.targets, reduction="none")


def _loss_by_example(batch, losses: torch.Tensor) -> list[float]:
    """Mean loss per label token of each example of a packed row, in row order."""
    found, at = [], 0
    for n in batch.lengths:
        n_labels = int((batch.targets[0, at : at + n] != IGNORE_INDEX).sum())
        if n_labels:  # the padding tail has none
            found.append(losses[0, at : at + n].sum().item() / n_labels)
        at += n
    return found


@torch.no_grad()
def test_packed_losses_equal_one_by_one(tiny, examples, pad_id):
    packed = make_batch(examples, pad_id, packing=True)
    assert packed.input_ids.shape[0] == 1 and len(packed.lengths) >= len(examples)
    together = _loss_by_example(packed, _per_token_loss(tiny, packed))
    for e, loss in zip(examples, together, strict=True):
        alone = make_batch([e], pad_id, packing=False)
        expected = _per_token_loss(tiny, alone).sum().item() / int((alone.targets != IGNORE_INDEX).sum())
        assert loss == pytest.approx(expected, abs=1e-4)


@torch.no_grad()
def test_the_check_sees_cross_example_attention(tiny, examples, pad_id):
    """Run the same packed row as one causal sequence (an all-ones mask, no segments): attention
    then crosses examples, and the per-example losses move by far more than the tolerance above."""
    packed = make_batch(examples, pad_id, packing=True)
    isolated = _loss_by_example(packed, _per_token_loss(tiny, packed))
    decoder = output_layer(tiny)[0]
    leaking = decoder(
        input_ids=packed.input_ids,
        attention_mask=torch.ones_like(packed.input_ids),
        position_ids=packed.position_ids,
        use_cache=False,
    )
    leaked = _loss_by_example(packed, _per_token_loss(tiny, packed, leaking.last_hidden_state))
    assert max(abs(a - b) for a, b in zip(leaked[1:], isolated[1:], strict=True)) > 1e-3


@pytest.mark.parametrize("chunk_size", [7, 1024])
@torch.no_grad()
def test_labelled_loss_of_packed_and_padded_batches_agree(tiny, examples, pad_id, chunk_size):
    packed = labelled_loss(tiny, make_batch(examples, pad_id, True), chunk_size)
    padded = labelled_loss(tiny, make_batch(examples, pad_id, False), chunk_size)
    assert packed.n_label_tokens == padded.n_label_tokens
    assert packed.loss_sum.item() == pytest.approx(padded.loss_sum.item(), rel=1e-5)
    assert int(packed.n_correct) == int(padded.n_correct)


def test_a_packed_batch_refuses_a_model_without_packed_attention(tiny, examples, pad_id):
    tiny.set_attn_implementation("sdpa")
    try:
        with pytest.raises(ValueError, match=attention.NAME):
            labelled_loss(tiny, make_batch(examples, pad_id, True), 1024)
    finally:
        tiny.set_attn_implementation(attention.NAME)


def test_the_prompt_all_examples_share_is_computed_once_with_the_gradients_of_separate_rows(
    tiny_model_name, examples, pad_id
):
    """The E2E examples begin with the same system prompt and instruction: a packed row holds those
    tokens once, and the loss and every weight's gradient are those of padded rows."""
    packed, padded = make_batch(examples, pad_id, True), make_batch(examples, pad_id, False)
    assert packed.parents is not None and packed.parents[0] == -1
    assert set(packed.parents[1 : len(examples) + 1]) == {0}  # every example continues the shared prompt
    shared = packed.lengths[0]
    assert shared > 20 and packed.n_tokens == padded.n_tokens - (len(examples) - 1) * shared

    model = load_model(tiny_model_name).model.train()
    grads = []
    for batch in (packed, padded):
        parts = labelled_loss(model, batch, 1024)
        parts.loss_sum.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        model.zero_grad(set_to_none=True)
        grads[-1]["loss"] = parts.loss_sum.detach()
    got, expected = grads
    assert got.keys() == expected.keys()
    for name, grad in expected.items():
        assert ((got[name] - grad).norm() / grad.norm()).item() <= 1e-5, name
