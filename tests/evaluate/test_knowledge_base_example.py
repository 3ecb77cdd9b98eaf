"""examples/knowledge_base: the generator is deterministic, the shipped files are its output, and its
test questions are worded away from the documents they ask about."""

import importlib.util
import json
import re
import sys
from pathlib import Path

from tunesmith.config import load_config
from tunesmith.encoders.data import read_passages

REPO = Path(__file__).resolve().parents[2]
FOLDER = REPO / "examples" / "knowledge_base"


def _generator():
    spec = importlib.util.spec_from_file_location("knowledge_base_generate", FOLDER / "generate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def _rows(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def _ngrams(words: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def test_the_same_seed_writes_the_same_files_and_the_shipped_ones_are_seed_0(tmp_path):
    generator = _generator()
    generator.main(["--seed", "0", "--out", str(tmp_path / "a")])
    generator.main(["--seed", "0", "--out", str(tmp_path / "b")])
    names = ["documents.jsonl", "train.jsonl", "validation.jsonl", "test.jsonl"]
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
        assert (tmp_path / "a" / name).read_bytes() == (FOLDER / name).read_bytes(), f"regenerate {name}"
    assert generator.generate(1)["test.jsonl"] != generator.generate(0)["test.jsonl"]


def test_every_fact_is_trained_in_three_phrasings_and_tested_in_another():
    files = _generator().generate(0)
    documents, train, test = (_rows(files[n]) for n in ("documents.jsonl", "train.jsonl", "test.jsonl"))
    assert len(documents) == 40 and len(test) == 144 and len(train) == 3 * len(test)
    assert not {r["prompt"] for r in test} & {r["prompt"] for r in train}
    # Every test answer is in the documents (retrieval can find it) and in the training answers.
    corpus = " ".join(d["text"] for d in documents)
    trained = {r["completion"] for r in train}
    assert all(r["completion"] in corpus and r["completion"] in trained for r in test)


def test_test_questions_do_not_copy_document_sentences():
    files = _generator().generate(0)
    seen = set().union(*(_ngrams(_words(d["text"]), 4) for d in _rows(files["documents.jsonl"])))
    copied = [r["prompt"] for r in _rows(files["test.jsonl"]) if _ngrams(_words(r["prompt"]), 4) & seen]
    assert copied == []


def test_the_shipped_config_reads_the_shipped_files():
    config = load_config(REPO / "configs" / "knowledge_rag.yaml")
    assert config.eval.task == "qa" and config.eval.rag.retriever == "bm25"
    assert len(read_passages(str(REPO / config.eval.rag.corpus)).ids) == 40
    for path in (config.data.train, config.data.validation, config.data.test):
        assert (REPO / path).is_file()
