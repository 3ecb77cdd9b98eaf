"""Regenerate train.jsonl and test.jsonl from the original TREC files (ISO-8859-1).

    python data/trec/convert.py /path/to/TREC   # the folder holding train_5500.label, TREC_10.label

Each source line is "COARSE:fine question"; only the coarse label is kept.
"""

import json
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
        rows.append(
            json.dumps({"prompt": PROMPT.format(question.strip()), "completion": coarse}, ensure_ascii=False)
        )
    target.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return len(rows)


if __name__ == "__main__":
    src = Path(sys.argv[1])
    here = Path(__file__).parent
    for name, out in (("train_5500.label", "train.jsonl"), ("TREC_10.label", "test.jsonl")):
        print(out, convert(src / name, here / out))
