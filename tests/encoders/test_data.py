"""Encoder data formats: what they read, and line-numbered errors for bad lines."""

import json

import pytest

from tunesmith.encoders.data import read_beir, read_labelled, read_pairs, read_texts
from tunesmith.errors import TunesmithError


def _write(path, text):
    path.write_text(text)
    return str(path)


def test_pairs_jsonl_and_beir_folder(tmp_path, beir_folder):
    rows = [{"query": "q1", "positive": "p1"}, {"query": "q2", "positive": "p2", "negative": "n2"}]
    pairs = read_pairs(_write(tmp_path / "p.jsonl", "".join(json.dumps(r) + "\n" for r in rows)), "train")
    assert [(p.query, p.negative) for p in pairs] == [("q1", None), ("q2", "n2")]
    assert len(read_pairs(str(beir_folder), "train")) == 4  # qrels/train.tsv
    assert len(read_pairs(str(beir_folder), "validation")) == 2  # qrels/dev.tsv
    test = read_beir(str(beir_folder), "test")
    assert test.query_ids == ["q6", "q7"] and len(test.corpus) == 8 and test.qrels["q6"] == {"d6": 1}


def test_labelled_csv_with_column_mapping_and_jsonl(tmp_path):
    csv_path = _write(tmp_path / "d.csv", 'abstract,cls\n"multi\nline text",a\nsecond,b\n')
    items = read_labelled(csv_path, {"text": "abstract", "label": "cls"})
    assert [(x.text, x.label, x.line) for x in items] == [("multi\nline text", "a", 2), ("second", "b", 4)]
    jsonl = _write(tmp_path / "d.jsonl", '{"text": "t", "label": 3}\n')
    assert read_labelled(jsonl)[0].label == "3"
    assert read_texts(csv_path, {"text": "abstract"}) == ["multi\nline text", "second"]


BAD = [
    # (file name, content, reader, expected message fragment)
    ("p.jsonl", '{"query": "q", "positive": "p"}\n{"query": "q"}\n', "pairs", "p.jsonl:2: positive: missing key"),
    ("p.jsonl", '{"query": "q", "positive": "p", "negatve": "n"}\n', "pairs", "p.jsonl:1: negatve: unknown key"),
    ("p.jsonl", '{"query": "q", "positive": ""}\n', "pairs", "p.jsonl:1: positive: empty text"),
    ("p.jsonl", '{"query": "q", "positive": 5}\n', "pairs", "p.jsonl:1: positive: expected a string, got number"),
    ("p.jsonl", '\n\n{"query": "q", "positive": "p"\n', "pairs", "p.jsonl:3: invalid JSON"),
    ("l.csv", "text,label\nok,a\n,b\n", "labelled", "l.csv:3: text: empty value"),
    ("l.csv", "text,label\nok,a,extra\n", "labelled", "l.csv:2: expected 2 fields, got 3"),
    ("l.csv", "body,label\nok,a\n", "labelled", "l.csv:1: column 'text' (for text) is not in the header"),
    (
        "l.jsonl",
        '{"text": "t", "label": "a"}\n{"text": "t", "label": null}\n',
        "labelled",
        "l.jsonl:2: label: expected",
    ),
    ("t.jsonl", '{"text": "fine"}\n{"txt": "typo"}\n', "texts", "t.jsonl:2: text: missing key"),
]
READERS = {"pairs": lambda p: read_pairs(p, "train"), "labelled": read_labelled, "texts": read_texts}


@pytest.mark.parametrize(("name", "content", "reader", "message"), BAD, ids=[b[3] for b in BAD])
def test_bad_lines_name_file_line_and_field(tmp_path, name, content, reader, message):
    with pytest.raises(TunesmithError) as caught:
        READERS[reader](_write(tmp_path / name, content))
    assert message in str(caught.value)


def test_bad_beir_qrels_name_the_line(tmp_path, beir_folder):
    import shutil

    folder = tmp_path / "beir"
    shutil.copytree(beir_folder, folder)
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq6\td6\t1\nq7\td99\t1\n")
    with pytest.raises(TunesmithError, match=r"test.tsv:3: corpus-id: 'd99' is not in corpus.jsonl"):
        read_beir(str(folder), "test")
    with pytest.raises(TunesmithError, match=r"no qrels/dev2.tsv \(found: dev.tsv, test.tsv, train.tsv\)"):
        read_beir(str(folder), "dev2")


def test_cli_exits_2_on_bad_encoder_data(tmp_path, tiny_bert):
    from tunesmith.cli import main

    bad = _write(tmp_path / "p.jsonl", '{"query": "q"}\n')
    text = f"model: {tiny_bert}\nout_dir: {tmp_path / 'run'}\ndata: {{train: {bad}}}\n"
    text += "method: {objective: contrastive}\n"
    config = _write(tmp_path / "c.yaml", text)
    assert main(["train", config]) == 2
    assert not (tmp_path / "run").exists()  # nothing written before the input checks pass
