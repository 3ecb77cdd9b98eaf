"""Encoder test data: a tiny BEIR folder and configs for the tiny random BERT (tests/conftest.py)."""

import json

import pytest
from encoder_helpers import PAPERS

from tunesmith.config import config_from_dict


@pytest.fixture(scope="session")
def beir_folder(tmp_path_factory):
    """A BEIR folder of the PAPERS: queries = titles; train/dev/test judgements split 4/2/2."""
    folder = tmp_path_factory.mktemp("beir")
    (folder / "qrels").mkdir()
    corpus = [json.dumps({"_id": f"d{i}", "text": text}) for i, (_, text) in enumerate(PAPERS)]
    queries = [json.dumps({"_id": f"q{i}", "text": title}) for i, (title, _) in enumerate(PAPERS)]
    (folder / "corpus.jsonl").write_text("\n".join(corpus) + "\n")
    (folder / "queries.jsonl").write_text("\n".join(queries) + "\n")
    for split, chosen in (("train", range(0, 4)), ("dev", range(4, 6)), ("test", range(6, 8))):
        rows = ["query-id\tcorpus-id\tscore"] + [f"q{i}\td{i}\t1" for i in chosen]
        (folder / "qrels" / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    return folder


@pytest.fixture
def encoder_config(tiny_bert, beir_folder, tmp_path):
    """A few contrastive steps of the tiny BERT on the BEIR folder; tests override what they need."""

    def make(**sections):
        raw = {
            "model": tiny_bert,
            "out_dir": str(tmp_path / "run"),
            "data": {"train": str(beir_folder), "validation": str(beir_folder), "test": str(beir_folder)},
            "method": {"name": "full", "objective": "contrastive"},
            "train": {
                "max_steps": 4,
                "batch_size": 2,
                "lr": 1e-3,
                "warmup_steps": 0,
                "eval_every": 2,
                "log_every": 1,
                "dtype": "float32",
            },
            "eval": {"task": "retrieval", "bootstrap_resamples": 50},
        }
        for section, values in sections.items():
            raw[section] = {**raw.get(section, {}), **values} if isinstance(values, dict) else values
        return config_from_dict(raw)

    return make
