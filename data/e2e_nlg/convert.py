"""Rebuild the shipped E2E NLG files from the original CSVs (see SOURCE.md).

    python data/e2e_nlg/convert.py ../shared/data/e2e_nlg

The original devset (547 meaning representations, 4,672 references) becomes our train and
validation sets, split by meaning representation so no validation input is seen in training;
the original test set (630 inputs with references) becomes test.jsonl.
"""

import csv
import json
import random
import sys
from pathlib import Path

PROMPT = "Write one fluent sentence describing this restaurant: {mr}"
VALIDATION_INPUTS = 25
VALIDATION_REFS_PER_INPUT = 4


def rows(path: Path) -> dict[str, list[str]]:
    by_mr: dict[str, list[str]] = {}
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            by_mr.setdefault(row["mr"], []).append(row["ref"])
    return by_mr


def write(path: Path, pairs) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for mr, ref in pairs:
            fh.write(json.dumps({"prompt": PROMPT.format(mr=mr), "completion": ref}, ensure_ascii=False) + "\n")


def main(source: Path) -> None:
    here = Path(__file__).parent
    dev = rows(source / "devset.csv")
    inputs = sorted(dev)
    random.Random(0).shuffle(inputs)
    held, train = inputs[:VALIDATION_INPUTS], inputs[VALIDATION_INPUTS:]
    train_pairs = [(mr, ref) for mr in train for ref in dev[mr]]
    random.Random(1).shuffle(train_pairs)
    write(here / "train.jsonl", train_pairs)
    write(here / "validation.jsonl", [(mr, ref) for mr in held for ref in dev[mr][:VALIDATION_REFS_PER_INPUT]])
    test = rows(source / "testset_w_refs.csv")
    write(here / "test.jsonl", [(mr, ref) for mr in test for ref in test[mr]])


if __name__ == "__main__":
    main(Path(sys.argv[1]))
