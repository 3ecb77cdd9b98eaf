import json

import pytest

from tunesmith.config import DataConfig
from tunesmith.data.prepare import prepare_data
from tunesmith.data.replay import replay_count, replay_order
from tunesmith.errors import TunesmithError


@pytest.fixture
def files(tmp_path):
    train = tmp_path / "train.jsonl"
    rows = [{"prompt": f"question {i}?", "completion": f"answer {i}"} for i in range(30)]
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    general = tmp_path / "general.txt"
    general.write_text(" ".join(f"word{i}" for i in range(400)) + "\n")  # ~24 blocks of 64 tokens
    return train, general


def _prepare(files, tokenizer, fraction, seed=0):
    train, general = files
    cfg = DataConfig(
        train=str(train), val_fraction=0.0, max_seq_len=64, replay={"path": str(general), "fraction": fraction}
    )
    return prepare_data(cfg, tokenizer, seed=seed, batch_size=4)


@pytest.mark.parametrize(("fraction", "replayed"), [(0.25, 10), (0.5, 30), (0.75, 90), (0.1, 3)])
def test_replayed_share_of_the_mixed_examples(files, smol_tokenizer, fraction, replayed):
    prepared = _prepare(files, smol_tokenizer, fraction)
    mixed = prepared.train
    assert len(mixed) == 30 + replayed and replayed / len(mixed) == pytest.approx(fraction, abs=0.02)
    flags = [mixed.is_replay(i) for i in range(len(mixed))]
    assert sum(flags) == replayed
    for i in range(len(mixed)):
        example = mixed[i]
        assert len(example.input_ids) == mixed.lengths[i]
        if flags[i]:  # general text: every token is a label
            assert example.labels == example.input_ids
    assert prepared.train_report.steps_per_epoch == -(-len(mixed) // 4)
    assert f"mixed into 30 examples (data.replay.fraction {fraction})" in prepared.train_report.notes[-1]


def test_mixed_set_is_a_pure_function_of_the_seed(files, smol_tokenizer):
    picks = [list(_prepare(files, smol_tokenizer, 0.75, seed).train.picks) for seed in (0, 0, 1)]
    assert picks[0] == picks[1] != picks[2]
    # More replay than blocks: every block once before any repeats.
    n_blocks = len(_prepare(files, smol_tokenizer, 0.75).train.replay)
    assert n_blocks < 90 and sorted(picks[0][:n_blocks]) == list(range(n_blocks))


@pytest.mark.parametrize(("n", "fraction", "count"), [(100, 0.2, 25), (3, 0.5, 3), (10, 0.01, 0)])
def test_replay_count_and_order(n, fraction, count):
    assert replay_count(n, fraction) == count
    assert replay_order(7, count, 0) == replay_order(7, count, 0) and len(replay_order(7, count, 0)) == count


@pytest.mark.parametrize(
    ("replay", "message"),
    [
        ({"path": "x.txt", "fraction": 1.0}, "less than 1"),
        ({"path": "x.txt", "fraction": 0}, "greater than 0"),
        ({"fraction": 0.1}, "path"),
    ],
)
def test_bad_replay_settings(replay, message):
    with pytest.raises(Exception, match=message):
        DataConfig(train="t.jsonl", replay=replay)


def test_empty_or_missing_replay_text(files, smol_tokenizer):
    files[1].write_text("")
    with pytest.raises(TunesmithError, match="general.txt: no examples"):
        _prepare(files, smol_tokenizer, 0.5)
    files[1].unlink()
    with pytest.raises(TunesmithError, match="general.txt"):
        _prepare(files, smol_tokenizer, 0.5)
