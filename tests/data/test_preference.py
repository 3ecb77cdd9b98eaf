"""Preference pairs: both formats, detection, line-numbered validation, tokenization."""

import json

import pytest

from tunesmith.config import DataConfig, config_from_dict
from tunesmith.data.formats import Message, read_examples
from tunesmith.data.preference import PreferencePair, holds_pairs, read_pairs, tokenize_pair
from tunesmith.data.prepare import prepare_data
from tunesmith.data.tokenize import IGNORE_INDEX
from tunesmith.errors import TunesmithError

USER = [{"role": "user", "content": "Hi?"}]
ANSWER = [{"role": "assistant", "content": "Hello."}]
OTHER = [{"role": "assistant", "content": "Go away."}]


def _openai(**changes):
    row = {"input": {"messages": USER}, "preferred_output": ANSWER, "non_preferred_output": OTHER}
    return {**row, **changes}


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.mark.parametrize(
    "row, fmt, expected",
    [
        ({"input": {"messages": USER}, "preferred_output": ANSWER}, "openai_dpo", "non_preferred_output: missing key"),
        (_openai(non_preferred_output=ANSWER), "openai_dpo", "non_preferred_output: identical to preferred_output"),
        (
            _openai(preferred_output=[{"role": "assistant", "content": "  "}]),
            "openai_dpo",
            "preferred_output[0].content: empty content",
        ),
        (
            _openai(preferred_output=[]),
            "openai_dpo",
            "preferred_output: expected one assistant message, got 0 messages",
        ),
        (
            _openai(preferred_output=[{"role": "user", "content": "x"}]),
            "openai_dpo",
            "preferred_output[0].role: the answer must be an assistant message, not user",
        ),
        (_openai(input={"messages": []}), "openai_dpo", "input.messages: empty prompt"),
        (_openai(input={"messages": USER, "tool": []}), "openai_dpo", "input.tool: unknown key"),
        (
            _openai(input={"messages": [*USER, *ANSWER]}),
            "openai_dpo",
            "input.messages[1].role: the prompt must end with a user or tool message",
        ),
        (
            _openai(input={"messages": [{"role": "bot", "content": "x"}]}),
            "openai_dpo",
            "input.messages[0].role: unknown role 'bot'",
        ),
        (_openai(extra=1), "openai_dpo", "extra: unknown key"),
        ({"prompt": "Hi?", "chosen": "Same.", "rejected": "Same."}, "chosen_rejected", "rejected: identical to chosen"),
        ({"prompt": "", "chosen": "a", "rejected": "b"}, "chosen_rejected", "prompt: empty content"),
        ({"prompt": "Hi?", "chosen": "a"}, "chosen_rejected", "rejected: missing key"),
        ({"prompt": 3, "chosen": "a", "rejected": "b"}, "chosen_rejected", "prompt: expected a string or an array"),
        ('{"prompt": "Hi?", "chosen": ', "chosen_rejected", "invalid JSON"),
    ],
)
def test_a_bad_line_is_named_with_its_field(tmp_path, row, fmt, expected):
    good = _openai() if fmt == "openai_dpo" else {"prompt": "Hi?", "chosen": "a", "rejected": "b"}
    path = _write(tmp_path / "pairs.jsonl", [good, row])
    loaded = read_pairs(path)
    assert loaded.format == fmt and len(loaded.examples) == 1
    assert [str(e).split(": ", 1)[0] for e in loaded.errors] == [f"{path}:2"]
    assert expected in str(loaded.errors[0])


@pytest.mark.parametrize(
    "row",
    [
        _openai(),
        {"prompt": "Hi?", "chosen": "Hello.", "rejected": "Go away."},
        {"prompt": USER, "chosen": ANSWER, "rejected": OTHER},
    ],
)
def test_both_formats_read_to_the_same_pair(tmp_path, row):
    loaded = read_pairs(_write(tmp_path / "p.jsonl", [row]))
    assert loaded.examples == [PreferencePair(1, (Message("user", "Hi?"),), "Hello.", "Go away.")]
    assert holds_pairs(tmp_path / "p.jsonl")


def test_supervised_readers_point_preference_files_to_dpo(tmp_path):
    path = _write(tmp_path / "p.jsonl", [_openai()])
    with pytest.raises(TunesmithError, match="holds preference pairs .*method.name=dpo"):
        read_examples(path)
    assert not holds_pairs(_write(tmp_path / "sft.jsonl", [{"prompt": "a", "completion": "b"}]))


def test_labels_cover_the_answer_only_and_long_prompts_lose_early_turns(smol_tokenizer):
    turns = []
    for i in range(6):
        turns += [Message("user", f"Question {i}: " + "words " * 20), Message("assistant", "Earlier answer.", 0)]
    pair = PreferencePair(1, (Message("system", "Be kind."), *turns, Message("user", "Last?")), "Yes.", "No way.")
    whole = tokenize_pair(smol_tokenizer, pair, 4096)
    assert whole.dropped_turns == 0
    for side, answer in ((whole.chosen, "Yes."), (whole.rejected, "No way.")):
        labelled = smol_tokenizer.decode([t for t in side.labels if t != IGNORE_INDEX])
        assert labelled.strip() == answer + smol_tokenizer.eos_token
    short = tokenize_pair(smol_tokenizer, pair, 120)
    assert short.dropped_turns > 0 and len(short.rejected.input_ids) <= 120
    text = smol_tokenizer.decode(short.chosen.input_ids)
    assert "Be kind." in text and "Last?" in text and "Question 0" not in text
    assert [t for t in short.chosen.labels if t != IGNORE_INDEX] == [
        t for t in whole.chosen.labels if t != IGNORE_INDEX
    ]


def test_prepare_data_reports_and_splits_pairs(smol_tokenizer, tmp_path):
    rows = [{"prompt": f"Q{i}?", "chosen": "Yes.", "rejected": "No."} for i in range(10)]
    rows.append({"prompt": "Q0?", "chosen": "Yes.", "rejected": "No."})
    path = _write(tmp_path / "pairs.jsonl", rows)
    prepared = prepare_data(DataConfig(train=str(path), val_fraction=0.2), smol_tokenizer)
    assert prepared.pairs and len(prepared.train) + len(prepared.validation) == 11
    assert "exact duplicate of line 1" in prepared.render()
    assert prepared.validation_examples[0].messages[-1] == Message("assistant", "Yes.")


@pytest.mark.parametrize(
    "method, data_format, message",
    [
        ({"name": "lora", "beta": 0.2}, "auto", "method.beta only applies to method.name=dpo"),
        ({"name": "full", "weights": "full"}, "auto", "method.weights only applies to method.name=dpo"),
        ({"name": "lora"}, "openai_dpo", "data.format=openai_dpo is preference data: it needs method.name=dpo"),
        ({"name": "dpo"}, "messages", "method.name=dpo needs preference pairs, not data.format=messages"),
    ],
)
def test_config_refuses_dpo_settings_without_dpo(method, data_format, message):
    with pytest.raises(TunesmithError, match=message):
        config_from_dict({"data": {"train": "x.jsonl", "format": data_format}, "method": method})


@pytest.mark.parametrize("method", [{"name": "lora"}, {"name": "dpo", "weights": "full", "beta": 0.3}])
def test_a_dumped_config_loads_again(method):
    """The run folder's config.yaml (every field written out) must load, as the service reads it."""
    import yaml

    from tunesmith.config import dump_config

    cfg = config_from_dict({"data": {"train": "x.jsonl"}, "method": method})
    assert config_from_dict(yaml.safe_load(dump_config(cfg))) == cfg
