"""The token store: built once per data and settings, reused, rebuilt when what it depends on
changes, never read when damaged; every reader gives the same examples; errors at scale."""

import copy
import csv
import json

import pytest

import tunesmith.data.prepare as prepare
from tests.conftest import REPO
from tunesmith.config import DataConfig
from tunesmith.data.formats import read_examples
from tunesmith.data.issues import kind
from tunesmith.data.store import remove_stores_of, store_root
from tunesmith.data.tokenize import tokenize_example
from tunesmith.errors import TunesmithError
from tunesmith.models import load_tokenizer
from tunesmith.train.recipe import train


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNESMITH_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def builds(monkeypatch):
    """The data specs whose store was built (not read from the cache) since the test began."""
    built = []
    real = prepare.build_store

    def counting(source, *args, **kwargs):
        built.append(source.spec)
        return real(source, *args, **kwargs)

    monkeypatch.setattr(prepare, "build_store", counting)
    return built


def _e2e_rows(n: int) -> list[dict]:
    """n distinct prompt/completion pairs recombined from the shipped E2E data."""
    rows = [json.loads(line) for line in (REPO / "data/e2e_nlg/train.jsonl").read_text().splitlines()]
    return [
        {"prompt": rows[k % len(rows)]["prompt"], "completion": rows[(k // len(rows) + k) % len(rows)]["completion"]}
        for k in range(n)
    ]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _tokens(data) -> list[tuple]:
    return [(e.input_ids, e.labels, e.line) for e in (data[i] for i in range(len(data)))]


def test_fifty_thousand_examples_train_and_the_store_is_reused(home, builds, tmp_path, tiny_config, small_e2e):
    big = _jsonl(tmp_path / "big.jsonl", _e2e_rows(50_000))
    cfg = tiny_config(
        data={"train": str(big), "max_seq_len": 256},
        train={"max_steps": 2, "eval_every": 2, "save_every": 100, "log_every": 1},
        eval={"samples": 1, "max_new_tokens": 2},
    )
    summary = train(cfg)
    assert summary.steps == 2
    assert builds == [str(big), str(small_e2e / "validation.jsonl")]
    assert train(cfg, overwrite=True).steps == 2
    assert len(builds) == 2  # the second run mapped both stores: no tokenizing
    data = prepare.prepare_data(cfg.data, load_tokenizer(cfg.model))
    assert len(data.train) == 50_000 and data.train_report.n_examples == 50_000
    assert len(builds) == 2


def test_the_store_is_rebuilt_when_the_file_tokenizer_or_max_seq_len_changes(home, builds, tmp_path, smol_tokenizer):
    path = _jsonl(tmp_path / "d.jsonl", _e2e_rows(40))
    cfg = DataConfig(train=str(path), val_fraction=0.25, max_seq_len=256)
    first = prepare.prepare_data(cfg, smol_tokenizer, seed=1)
    prepare.prepare_data(cfg, smol_tokenizer, seed=2, batch_size=4)  # a split or batch setting: same store
    assert len(builds) == 1
    prepare.prepare_data(cfg.model_copy(update={"max_seq_len": 300}), smol_tokenizer)
    assert len(builds) == 2
    other = copy.deepcopy(smol_tokenizer)
    other.chat_template = "{# edited #}" + smol_tokenizer.chat_template
    prepare.prepare_data(cfg, other)
    assert len(builds) == 3
    _jsonl(path, _e2e_rows(41))
    again = prepare.prepare_data(cfg, smol_tokenizer, seed=1)
    assert len(builds) == 4
    assert len(again.train) + len(again.validation) == len(first.train) + len(first.validation) + 1


def test_removing_a_files_stores_leaves_the_stores_of_other_files(home, tmp_path, smol_tokenizer):
    kept, gone = _jsonl(tmp_path / "kept.jsonl", _e2e_rows(12)), _jsonl(tmp_path / "gone.jsonl", _e2e_rows(13))
    for path, max_seq_len in ((kept, 256), (gone, 256), (gone, 300)):
        prepare.prepare_data(DataConfig(train=str(path), val_fraction=0.0, max_seq_len=max_seq_len), smol_tokenizer)
    assert remove_stores_of(gone) == 2
    (left,) = [p for p in store_root().iterdir() if p.is_dir()]
    assert json.loads((left / "meta.json").read_text())["files"] == [str(kept)]
    assert sorted(p.name for p in store_root().iterdir()) == sorted([left.name, f"{left.name}.lock"])


@pytest.mark.parametrize("damage", ["truncate", "flip", "crash_before_rename"])
def test_a_damaged_or_partial_store_is_rebuilt_not_read(home, builds, tmp_path, smol_tokenizer, damage):
    path = _jsonl(tmp_path / "d.jsonl", _e2e_rows(30))
    cfg = DataConfig(train=str(path), val_fraction=0.0, max_seq_len=256)
    expected = _tokens(prepare.prepare_data(cfg, smol_tokenizer).train)
    (store,) = [p for p in store_root().iterdir() if p.is_dir()]
    tokens = store / "tokens.bin"
    if damage == "truncate":  # a crash mid-write that still left the folder in place
        tokens.write_bytes(tokens.read_bytes()[:-7])
    elif damage == "flip":
        data = bytearray(tokens.read_bytes())
        data[100] ^= 0xFF
        tokens.write_bytes(bytes(data))
    else:  # killed before the rename: only the temporary folder exists
        store.rename(store.with_name(store.name + ".tmp-12345"))
    assert _tokens(prepare.prepare_data(cfg, smol_tokenizer).train) == expected
    assert len(builds) == 2


def test_parquet_datasets_csv_and_shards_give_the_same_examples_as_jsonl(home, tmp_path, smol_tokenizer):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = _e2e_rows(24)
    jsonl = _jsonl(tmp_path / "d.jsonl", rows)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet", row_group_size=5)
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    with open(tmp_path / "d.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, ["prompt", "completion"])
        writer.writeheader()
        writer.writerows(rows)
    (tmp_path / "shards").mkdir()
    _jsonl(tmp_path / "shards/part-0.jsonl", rows[:10])
    _jsonl(tmp_path / "shards/part-1.jsonl", rows[10:])

    def examples(spec):
        data = prepare.prepare_data(DataConfig(train=str(spec), val_fraction=0.0, max_seq_len=256), smol_tokenizer)
        return [(e.input_ids, e.labels) for e in (data.train[i] for i in range(len(data.train)))], data

    expected, _ = examples(jsonl)
    for spec in (tmp_path / "d.parquet", tmp_path / "saved", tmp_path / "shards", tmp_path / "shards/*.jsonl"):
        got, data = examples(spec)
        assert got == expected, spec
    assert examples(tmp_path / "d.csv")[0] == expected
    # Row numbers name the row in its own shard, so an error points at the right file and line.
    assert data.train.lines.tolist() == list(range(1, 11)) + list(range(1, 15))


def test_bad_lines_among_a_hundred_thousand_are_listed_50_then_counted_by_kind(home, tmp_path, smol_tokenizer):
    lines, bad = [], {}
    kinds = [
        ("invalid JSON", '{"text": "x"'),
        ("empty content", '{"text": " "}'),
        ("unknown key", '{"text": "x", "txt": 1}'),
    ]
    spread = {7 + 834 * i for i in range(120)}  # 120 bad lines across the file
    for k in range(100_120):
        if k in spread:
            name, line = kinds[len(bad) % 3]
            bad[k + 1] = name
            lines.append(line)
        else:
            lines.append(json.dumps({"text": f"document number {k}"}))
    path = tmp_path / "big.jsonl"
    path.write_text("\n".join(lines) + "\n")
    cfg = DataConfig(train=str(path), val_fraction=0.0, max_seq_len=64)
    data = prepare.prepare_data(cfg, smol_tokenizer, strict=False)
    report = data.train_report
    assert report.n_examples == 100_000 and report.n_errors == 120
    assert [issue.line for issue in report.issues] == sorted(bad)[:50]
    assert [kind(issue) for issue in report.issues[:3]] == ["invalid JSON", "empty content", "unknown key"]
    # Kinds cycle through the bad lines: the 50 listed take 17, 17 and 16 of each 40.
    assert report.unlisted == {"error: unknown key": 24, "error: invalid JSON": 23, "error: empty content": 23}
    assert "and 70 more: 24 unknown key, 23 invalid JSON, 23 empty content" in report.render()
    with pytest.raises(TunesmithError, match="data has 120 error"):
        prepare.prepare_data(cfg, smol_tokenizer)


@pytest.mark.parametrize(
    "overlength,n_train,message",
    [
        (
            "error",
            None,
            "over max_seq_len {limit}: 1 examples (the longest: {longest} tokens): data.max_seq_len: "
            "{longest} fits them all; or set data.overlength: drop",
        ),
        ("drop", 2, "over max_seq_len {limit}: 1 examples, dropped (data.overlength: drop)"),
        ("truncate_prompt", 3, "over max_seq_len {limit}: 1 examples, their prompts cut from the start"),
    ],
)
def test_over_length_examples_error_drop_or_lose_their_prompt_start(
    home, tmp_path, smol_tokenizer, overlength, n_train, message
):
    long_prompt = " ".join(f"word{i}" for i in range(60))
    rows = [{"prompt": "hi", "completion": "a short answer"}, {"prompt": "yo", "completion": "another one"}]
    rows.insert(1, {"prompt": long_prompt, "completion": "the kept answer"})
    path = _jsonl(tmp_path / "d.jsonl", rows)
    limit = 48
    cfg = DataConfig(train=str(path), val_fraction=0.0, max_seq_len=limit, overlength=overlength)
    example = read_examples(path).examples[1]
    whole = tokenize_example(smol_tokenizer, example, 10**6)
    longest = len(whole.input_ids)
    expected = message.format(longest=longest, limit=limit)
    if n_train is None:
        with pytest.raises(TunesmithError) as error:
            prepare.prepare_data(cfg, smol_tokenizer)
        assert f"d.jsonl:2: {longest} tokens > max_seq_len {limit}" in str(error.value)
        assert expected in str(error.value)
        return
    data = prepare.prepare_data(cfg, smol_tokenizer)
    assert len(data.train) == n_train
    assert expected in data.train_report.render()
    if overlength == "truncate_prompt":
        kept = data.train[1]
        assert kept.input_ids == whole.input_ids[-limit:] and kept.labels == whole.labels[-limit:]
        assert smol_tokenizer.decode([t for t in kept.labels if t >= 0]).startswith("the kept answer")
