"""What a domain vocabulary saves: MiniLM's WordPiece tokens per medical abstract before and after
`tokenizer.add_tokens` with the N most frequent words of the training split that it cuts into
several pieces (chosen from data/medical_abstracts/train.csv only; counted on train and test).

    python benchmarks/domain_vocabulary.py            # 200 words
    python benchmarks/domain_vocabulary.py --words 1000 --out my_words.txt

The words go through tunesmith's own `add_domain_words` (whole words only), so the counts are those a
`configs/medical_mlm.yaml` run with `tokenizer.add_tokens` would see; "windows" are its 126-token MLM
windows (max_seq_len 128 less [CLS] and [SEP]).
"""

from __future__ import annotations

import argparse
import collections
import csv
import statistics
from pathlib import Path

from transformers import AutoTokenizer

from tunesmith.config import TokenizerConfig
from tunesmith.models import MINILM_L6, resolve_model_path
from tunesmith.models.vocabulary import add_domain_words

DATA = Path(__file__).resolve().parent.parent / "data" / "medical_abstracts"
WINDOW = 126


def texts(split: str) -> list[str]:
    with open(DATA / f"{split}.csv", newline="", encoding="utf-8") as fh:
        return [row["text"] for row in csv.DictReader(fh)]


def frequent_split_words(tokenizer, train: list[str], n: int) -> list[str]:
    """The n most frequent pre-tokenized words of the training texts that split into 2+ pieces."""
    backend = tokenizer.backend_tokenizer
    counts = collections.Counter()
    for text in train:
        counts.update(w for w, _ in backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(text)))
    return [w for w, _ in counts.most_common() if len(tokenizer.tokenize(w)) > 1][:n]


def lengths(tokenizer, items: list[str]) -> list[int]:
    return [len(tokenizer(t, add_special_tokens=False).input_ids) for t in items]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--words", type=int, default=200)
    parser.add_argument("--out", help="write the chosen words here, one a line (a tokenizer.add_tokens file)")
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(MINILM_L6))
    splits = {"train": texts("train"), "test": texts("test")}
    words = frequent_split_words(tokenizer, splits["train"], args.words)
    pieces = statistics.mean(len(tokenizer.tokenize(w)) for w in words)
    before = {s: lengths(tokenizer, x) for s, x in splits.items()}
    add_domain_words(tokenizer, TokenizerConfig(add_tokens=words))
    after = {s: lengths(tokenizer, x) for s, x in splits.items()}
    print(f"{len(words)} words, {pieces:.2f} pieces each before; first 10: {', '.join(words[:10])}")
    print("| split | mean tokens per abstract | median | MLM windows |\n|---|---|---|---|")
    for s in splits:
        b, a = before[s], after[s]
        windows = [sum(-(-n // WINDOW) for n in x) for x in (b, a)]
        change = 100 * (statistics.mean(a) / statistics.mean(b) - 1)
        print(
            f"| {s} | {statistics.mean(b):.1f} -> {statistics.mean(a):.1f} ({change:+.1f}%) | "
            f"{statistics.median(b):g} -> {statistics.median(a):g} | {windows[0]:,} -> {windows[1]:,} |"
        )
    if args.out:
        Path(args.out).write_text("".join(f"{w}\n" for w in words), encoding="utf-8")


if __name__ == "__main__":
    main()
