"""Regenerate train.jsonl, validation.jsonl and test.jsonl from the original TREC files (ISO-8859-1).

    python data/trec/convert.py /path/to/TREC   # the folder holding train_5500.label, TREC_10.label

Each source line is "COARSE:fine question"; only the coarse label is kept. TREC has no validation
set, so 500 training questions, drawn with a fixed seed, become one: hyperparameters are chosen on
them and the 500 test questions are read once.
"""

import json
import random
import sys
from pathlib import Path

LABELS = ("ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM")
PROMPT = "Classify the question into one of " + ", ".join(LABELS) + ".\nQuestion: {}"


def convert(source: Path, target: Path) -> int:
    rows = []
    for line in source.read_text(encoding="iso-8859-1").splitlines():
        if not line.strip():
            continue
        label, question = line.split(" ", 1)
        coarse = label.split(":", 1)[0]
        assert coarse in LABELS, f"{source}: unknown label {label!r}"
        rows.append(json.dumps({"prompt": PROMPT.format(question.strip()), "completion": coarse}, ensure_ascii=False))
    target.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return len(rows)


def split_validation(train: Path, validation: Path, size: int = 500, seed: int = 0) -> tuple[int, int]:
    rows = train.read_text(encoding="utf-8").splitlines()
    held = set(random.Random(seed).sample(range(len(rows)), size))
    kept = [row for i, row in enumerate(rows) if i not in held]
    validation.write_text("\n".join(rows[i] for i in sorted(held)) + "\n", encoding="utf-8")
    train.write_text("\n".join(kept) + "\n", encoding="utf-8")
    return len(kept), size


if __name__ == "__main__":
    src = Path(sys.argv[1])
    here = Path(__file__).parent
    for name, out in (("train_5500.label", "train.jsonl"), ("TREC_10.label", "test.jsonl")):
        print(out, convert(src / name, here / out))
    print("train.jsonl, validation.jsonl", split_validation(here / "train.jsonl", here / "validation.jsonl"))
