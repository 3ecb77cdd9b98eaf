"""Hard negatives: mined with BM25 from the whole corpus a BEIR folder searches."""

import json

from tunesmith.config import config_from_dict
from tunesmith.encoders.tasks import ContrastiveTask, EncoderTask


def _beir(folder, corpus: dict[str, str], queries: dict[str, str], splits: dict[str, dict[str, str]]):
    (folder / "qrels").mkdir(parents=True)
    for name, items in (("corpus", corpus), ("queries", queries)):
        lines = [json.dumps({"_id": key, "text": text}) for key, text in items.items()]
        (folder / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    for split, judged in splits.items():
        rows = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t1" for q, d in judged.items()]
        (folder / "qrels" / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    return folder


def test_hard_negatives_come_from_the_whole_corpus(tmp_path):
    # d2 is nobody's positive (a test-split abstract, say) but is the query's nearest miss: mining
    # among the positives alone would have to take d1, which shares nothing with the query.
    corpus = {"d0": "apple banana", "d1": "cherry grape", "d2": "kiwi apple mango", "d3": "plum pear"}
    folder = _beir(
        tmp_path / "beir",
        corpus,
        {"q0": "apple kiwi", "q1": "cherry"},
        {"train": {"q0": "d0"}, "dev": {"q1": "d1"}},
    )
    cfg = config_from_dict(
        {
            "model": "unused",
            "data": {"train": str(folder), "validation": str(folder)},
            "method": {"name": "full", "objective": "contrastive"},
            "encoder": {"hard_negatives": 1},
        }
    )
    task = ContrastiveTask(cfg, encoder=None)
    assert isinstance(task, EncoderTask)
    (pair,) = task.train
    assert task.negatives[id(pair)] == ["kiwi apple mango"]
    (held,) = task.validation
    assert task.negatives[id(held)] and task.negatives[id(held)] != ["cherry grape"]
