"""Pooling settings read from a checkpoint folder, in both sentence-transformers formats."""

import json

import pytest
import torch

from tunesmith.encoders.model import Pooling, pool, read_pooling
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
