"""Pooling settings read from a checkpoint folder, in both sentence-transformers formats."""

import json

import pytest
import torch

from tunesmith.encoders.model import Pooling, load_encoder, pool, read_pooling, set_dropout
from tunesmith.errors import TunesmithError

NORMALIZE = {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}
POOLING = {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}
CASES = [
    # (modules, pooling config, sentence_bert_config, expected)
    (None, None, None, Pooling("mean", True, 512)),
    ([POOLING, NORMALIZE], {"pooling_mode_cls_token": True}, {"max_seq_length": 256}, Pooling("cls", True, 256)),
    ([POOLING], {"pooling_mode_mean_tokens": True}, None, Pooling("mean", False, 512)),
    ([POOLING, NORMALIZE], {"embedding_dimension": 8, "pooling_mode": "max"}, None, Pooling("max", True, 512)),
]


@pytest.mark.parametrize(("modules", "pooling", "sbert", "expected"), CASES)
def test_read_pooling(tmp_path, modules, pooling, sbert, expected):
    if modules:
        (tmp_path / "modules.json").write_text(json.dumps(modules))
        (tmp_path / "1_Pooling").mkdir()
        (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    if sbert:
        (tmp_path / "sentence_bert_config.json").write_text(json.dumps(sbert))
    assert read_pooling(tmp_path, 512) == expected


def test_unknown_pooling_is_an_error(tmp_path):
    (tmp_path / "modules.json").write_text(json.dumps([POOLING]))
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": "lasttoken"}))
    with pytest.raises(TunesmithError, match="is not one of mean, cls, max"):
        read_pooling(tmp_path, 512)


def test_pooling_ignores_padding():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert pool(hidden, mask, "mean").tolist() == [[2.0, 3.0]]
    assert pool(hidden, mask, "max").tolist() == [[3.0, 4.0]]
    assert pool(hidden, mask, "cls").tolist() == [[1.0, 2.0]]


TEXTS = ["a short query", "a much longer document about graph neural networks and molecules " * 3, "x", "mid length"]


@pytest.mark.parametrize("mode", ["mean", "cls", "max"])
def test_packed_batches_give_the_padded_embeddings_and_gradients(tiny_bert, mode):
    """BERT runs packed (texts back to back, each attending to itself): the embeddings and the
    weight gradients must be those of the padded batch any model type takes."""
    encoder = load_encoder(tiny_bert)
    encoder.pooling = Pooling(mode, True, 64)
    set_dropout(encoder.model, 0.0)
    encoder.model.train()
    assert encoder.packs() and "lengths" in encoder.batch(TEXTS)

    def run(batch):
        encoder.model.zero_grad()
        embedded = encoder.embed(batch)
        (embedded * torch.linspace(-1, 1, embedded.numel()).view_as(embedded)).sum().backward()
        return embedded.detach(), [p.grad.clone() for p in encoder.model.parameters() if p.grad is not None]

    packed, packed_grads = run(encoder.batch(TEXTS, 16))
    padded, padded_grads = run(encoder.tokenize(TEXTS, 16))
    assert torch.allclose(packed, padded, atol=1e-5)
    assert len(packed_grads) == len(padded_grads)
    for got, expected in zip(packed_grads, padded_grads, strict=True):
        assert torch.allclose(got, expected, atol=1e-5, rtol=1e-4)


def test_token_embeddings_are_the_same_packed_or_padded(tiny_bert):
    """Late interaction reads every real token, unit length, texts back to back: padding never appears."""
    encoder = load_encoder(tiny_bert)
    packed, packed_lengths = encoder.token_embeddings(encoder.batch(TEXTS, 16))
    padded, padded_lengths = encoder.token_embeddings(encoder.tokenize(TEXTS, 16))
    assert (
        packed_lengths.tolist() == padded_lengths.tolist() == [len(encoder.tokenizer(t).input_ids[:16]) for t in TEXTS]
    )
    assert torch.allclose(packed, padded, atol=1e-5)
    assert torch.allclose(packed.norm(dim=-1), torch.ones(len(packed)))


def test_attention_dropout_while_training_falls_back_to_padded_batches(tiny_bert):
    encoder = load_encoder(tiny_bert)
    set_dropout(encoder.model, 0.1)
    encoder.model.train()
    assert not encoder.packs() and "attention_mask" in encoder.batch(TEXTS)
    encoder.model.eval()  # no dropout at inference: packed again
    assert encoder.packs()
