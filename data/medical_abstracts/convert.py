"""Regenerate train.csv and test.csv from the Medical Abstracts TC corpus.

    python data/medical_abstracts/convert.py DIR   # DIR holds medical_tc_test.csv and medical_tc_labels.csv

The corpus's 2,888 labelled abstracts are shuffled with a fixed seed; the first 400 become test.csv,
the next 1,200 train.csv (the rest is left out to keep the shipped data small). Labels are written
as condition names (neoplasms, ...) rather than numbers.
"""

import csv
import random
import sys
from pathlib import Path

SEED, TEST, TRAIN = 0, 400, 1200


def convert(source: Path, target: Path) -> dict[str, int]:
    with open(source / "medical_tc_labels.csv", encoding="utf-8", newline="") as fh:
        names = {row["condition_label"]: row["condition_name"] for row in csv.DictReader(fh)}
    with open(source / "medical_tc_test.csv", encoding="utf-8", newline="") as fh:
        rows = [(row["medical_abstract"].strip(), names[row["condition_label"]]) for row in csv.DictReader(fh)]
    random.Random(SEED).shuffle(rows)
    splits = {"test": rows[:TEST], "train": rows[TEST : TEST + TRAIN]}
    for name, part in splits.items():
        with open(target / f"{name}.csv", "w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["text", "label"])
            writer.writerows(part)
    return {name: len(part) for name, part in splits.items()}


if __name__ == "__main__":
    print(convert(Path(sys.argv[1]), Path(__file__).parent))
