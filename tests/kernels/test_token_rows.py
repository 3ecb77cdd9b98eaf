"""Added token rows trained beside their table: PEFT's loss and gradients, without its copy of the table."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.trainable_tokens.layer import TrainableTokensLayer
from transformers import AutoModelForCausalLM, Gemma3TextConfig, LlamaConfig

from tunesmith.data.batching import pad_batch
from tunesmith.data.tokenize import TokenizedExample
from tunesmith.kernels.token_rows import added_rows, lean_token_rows
from tunesmith.train.loss import labelled_loss

VOCAB, ADDED = 96, [93, 94, 95]
SMALL = {"vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2}
HEADS = {"num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8}
CONFIGS = {
    "llama": lambda: LlamaConfig(**SMALL, **HEADS, tie_word_embeddings=True),
    # Gemma 3 scales its embedding (sqrt(hidden)): the added rows must be scaled alike.
    "gemma3": lambda: Gemma3TextConfig(**SMALL, **HEADS, sliding_window=4, query_pre_attn_scalar=8),
}


def _model(family: str):
    torch.manual_seed(0)
    config = CONFIGS[family]()
    config._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(config)
    lora = LoraConfig(
        r=4, lora_alpha=8, target_modules="all-linear", trainable_token_indices=ADDED, init_lora_weights=False
    )
    model = get_peft_model(model, lora).train()
    with torch.no_grad():  # trained rows unlike the ones they started as
        added_rows(model.get_base_model().get_input_embeddings()).values.normal_()
    return model


def _batch():
    # The added ids as inputs and as labels (the end-of-turn case), among ordinary ones.
    rows = [[5, 93, 7, 8, 94, 95, 2], [95, 11, 12, 93]]
    return pad_batch([TokenizedExample(ids, ids, i, len(ids)) for i, ids in enumerate(rows)], 0)


def _step(model, fast: bool):
    parts = labelled_loss(model, _batch(), 1024, fast=fast)
    (parts.loss_sum / parts.n_label_tokens).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return parts.loss_sum.item(), grads


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_loss_and_gradients_are_peft_s_without_a_copy_of_the_table(family, monkeypatch):
    expected_loss, expected = _step(_model(family), fast=False)
    model = _model(family)
    assert lean_token_rows(model) == 1 and "LeanTrainableTokensLayer" in repr(model)

    def copied(*args, **kwargs):
        raise AssertionError("the table was copied to write the added rows in")

    monkeypatch.setattr(TrainableTokensLayer, "get_merged_weights", copied)
    loss, grads = _step(model, fast=True)
    assert loss == pytest.approx(expected_loss, rel=1e-6)
    assert grads.keys() == expected.keys() and any("trainable_tokens_delta" in n for n in grads)
    for name, grad in expected.items():
        assert ((grads[name] - grad).norm() / grad.norm()).item() <= 1e-5, name


def test_disabled_adapters_look_up_the_table_as_it_was(monkeypatch):
    """DPO's reference model is the adapter disabled: the base rows, not the trained ones."""
    model = _model("gemma3")
    lean_token_rows(model)
    ids = torch.tensor([[5, 93, 95]])
    embedding = model.get_base_model().get_input_embeddings()
    trained = embedding(ids)
    with model.disable_adapter():
        assert added_rows(embedding) is None
        base = embedding(ids)
    table = embedding.token_adapter.base_layer
    torch.testing.assert_close(base, table(ids))
    assert torch.equal(trained[0, 0], base[0, 0]) and not torch.allclose(trained[0, 1], base[0, 1])
