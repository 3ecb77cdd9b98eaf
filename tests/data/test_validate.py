import json

import pytest

from tunesmith.data.formats import Example, LoadedData, read_examples
from tunesmith.data.tokenize import IGNORE_INDEX, tokenize_example
from tunesmith.data.validate import TokenStats, validate_dataset


class CharTokenizer:
    """One token per character and eos = 0, so that token counts can be worked out by hand."""

    eos_token_id = 0
    bos_token_id = None

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}


def _pc_file(tmp_path, name, *pairs):
    path = tmp_path / name
    path.write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in pairs))
    return read_examples(path)


def _issues(report):
    return [(issue.line, issue.severity, issue.reason) for issue in report.issues]


def test_line_errors_are_carried_into_the_report(smol_tokenizer, tmp_path):
    path = tmp_path / "chat.jsonl"
    good = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    bad = {"messages": [{"role": "user", "content": "q"}, {"role": "bot", "content": "a"}]}
    path.write_text(f"{json.dumps(good)}\n\n{json.dumps(bad)}\n")
    report, _, tokenized, _ = validate_dataset(read_examples(path), smol_tokenizer, 512)
    assert not report.ok and len(tokenized) == 1
    assert (
        "line 3: messages[1].role: unknown role 'bot' (expected system, user, assistant, tool, function)"
        in report.render()
    )


def test_over_length_example_warns_with_label_tokens_lost(smol_tokenizer, tmp_path):
    data = _pc_file(tmp_path, "d.jsonl", ("q", "one two three four five six"))
    long = data.examples[0]
    whole = tokenize_example(smol_tokenizer, long, 4096)
    first_label = next(i for i, label in enumerate(whole.labels) if label != IGNORE_INDEX)
    total = sum(label != IGNORE_INDEX for label in whole.labels)
    max_len = first_label + 2
    report, _, tokenized, _ = validate_dataset(data, smol_tokenizer, max_len)
    assert _issues(report) == [
        (
            1,
            "warning",
            f"{len(whole.input_ids)} tokens > max_seq_len {max_len}: will be truncated to the first "
            f"{max_len} tokens, losing {total - 2} of {total} label tokens",
        )
    ]
    assert report.ok and len(tokenized[0].input_ids) == max_len


def test_example_without_label_tokens_after_truncation_is_an_error(smol_tokenizer, tmp_path):
    data = _pc_file(tmp_path, "d.jsonl", ("q", "a"))
    report, _, _, _ = validate_dataset(data, smol_tokenizer, 8)
    length = tokenize_example(smol_tokenizer, data.examples[0], 4096).original_length
    assert _issues(report) == [
        (1, "error", f"{length} tokens > max_seq_len 8: no label tokens are left in the first 8 tokens")
    ]
    assert not report.ok


def test_duplicates_and_train_validation_overlap_are_warnings(smol_tokenizer, tmp_path):
    train = _pc_file(tmp_path, "train.jsonl", ("a", "b"), ("c", "d"), ("a", "b"))
    val = _pc_file(tmp_path, "val.jsonl", ("x", "y"), ("c", "d"))
    report, val_report, _, val_tokens = validate_dataset(train, smol_tokenizer, 512, validation=val)
    assert _issues(report) == [(3, "warning", "exact duplicate of line 1")]
    assert _issues(val_report) == [(2, "warning", "identical to train line 2")]
    assert report.ok and val_report.ok and len(val_tokens) == 2
    assert "line 3: warning: exact duplicate of line 1" in report.render()
    assert val_report.steps_per_epoch is None


def test_stats_on_packed_raw_text():
    texts = LoadedData("t.txt", "text", [Example(1, text="a"), Example(3, text="bb"), Example(5, text="ccc")], [])
    # Stream a,eos,b,b,eos,c,c,c,eos (9 tokens) packs into blocks of 4, 4 and 1.
    report, _, blocks, _ = validate_dataset(texts, CharTokenizer(), 4, batch_size=2)
    assert report.stats == TokenStats((1, 3.0, 4, 4), (1, 3.0, 4, 4), 9, 9)
    assert (report.n_examples, report.steps_per_epoch, [b.line for b in blocks]) == (3, 2, [1, 3, 5])
    rendered = report.render()
    assert "tokens per sequence: min 1, mean 3.0, p95 4, max 4" in rendered
    assert "total: 9 tokens, 9 label tokens" in rendered and "steps per epoch: 2" in rendered


@pytest.mark.parametrize(
    "n, batch_size, grad_accum, steps", [(5, 1, 1, 5), (5, 2, 1, 3), (5, 2, 2, 2), (4, 2, 2, 1), (1, 8, 4, 1)]
)
def test_steps_per_epoch(smol_tokenizer, tmp_path, n, batch_size, grad_accum, steps):
    data = _pc_file(tmp_path, "d.jsonl", *[(f"q{i}", f"a{i}") for i in range(n)])
    report, _, _, _ = validate_dataset(data, smol_tokenizer, 512, batch_size=batch_size, grad_accum=grad_accum)
    assert report.steps_per_epoch == steps


def test_e2e_devset_smoke(smol_tokenizer, tmp_path):
    rows = open("/work/shared/data/e2e_nlg/devset.csv", encoding="utf-8").read().splitlines()[:51]
    path = tmp_path / "dev.csv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    report, _, tokenized, _ = validate_dataset(
        read_examples(path, columns={"prompt": "mr", "completion": "ref"}), smol_tokenizer, 256
    )
    assert report.ok and report.n_examples == 50 == len(tokenized)
    assert report.stats.label_tokens[0] > 1
