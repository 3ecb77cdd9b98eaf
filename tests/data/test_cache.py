"""Tokenise once: a second prepare_data of the same inputs is served from the cache."""

import pytest

import tunesmith.data.prepare as prepare
from tunesmith.config import DataConfig


def test_second_prepare_is_served_from_the_cache_and_edits_miss_it(tmp_path, small_e2e, smol_tokenizer, monkeypatch):
    monkeypatch.setenv("TUNESMITH_HOME", str(tmp_path / "home"))
    train = tmp_path / "train.jsonl"
    train.write_text((small_e2e / "train.jsonl").read_text())
    cfg = DataConfig(train=str(train), validation=str(small_e2e / "validation.jsonl"))
    first = prepare.prepare_data(cfg, smol_tokenizer)

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("tokenized again")

    monkeypatch.setattr(prepare, "validate_dataset", no_tokenizing)
    again = prepare.prepare_data(cfg, smol_tokenizer)
    assert [e.input_ids for e in again.train] == [e.input_ids for e in first.train]
    assert again.train_report.render() == first.train_report.render()

    train.write_text(train.read_text() + '{"prompt": "new", "completion": "line"}\n')
    with pytest.raises(AssertionError, match="tokenized again"):
        prepare.prepare_data(cfg, smol_tokenizer)
