"""Regenerate the BEIR folder (corpus.jsonl, queries.jsonl, qrels/*.tsv) from SciTLDR-A's JSONL.

    python data/scitldr/convert.py /path/to/SciTLDR-A   # the folder holding train/dev/test.jsonl

Corpus: every paper's abstract (its sentences joined by spaces), train + dev + test. Queries: the
first TLDR of each paper (the author-written one where the paper has several); each query's one
relevant document is its own paper's abstract. qrels/dev.tsv judges only the first 128 dev queries
(for a cheap validation loss); all dev abstracts stay in the corpus.
"""

import json
import sys
from pathlib import Path

SPLITS = ("train", "dev", "test")
# Validation loss runs several times per training run: 128 dev queries keep it to seconds.
DEV_QUERIES = 128


def convert(source: Path, target: Path) -> dict[str, int]:
    corpus, queries, counts = [], [], {}
    (target / "qrels").mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        qrels = ["query-id\tcorpus-id\tscore"]
        for line in (source / f"{split}.jsonl").read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            paper = json.loads(line)
            doc, query = paper["paper_id"], f"{paper['paper_id']}-tldr"
            corpus.append(json.dumps({"_id": doc, "text": " ".join(paper["source"])}, ensure_ascii=False))
            queries.append(json.dumps({"_id": query, "text": paper["target"][0].strip()}, ensure_ascii=False))
            if split != "dev" or len(qrels) <= DEV_QUERIES:
                qrels.append(f"{query}\t{doc}\t1")
        (target / "qrels" / f"{split}.tsv").write_text("\n".join(qrels) + "\n", encoding="utf-8")
        counts[split] = len(qrels) - 1
    (target / "corpus.jsonl").write_text("\n".join(corpus) + "\n", encoding="utf-8")
    (target / "queries.jsonl").write_text("\n".join(queries) + "\n", encoding="utf-8")
    return counts


if __name__ == "__main__":
    print(convert(Path(sys.argv[1]), Path(__file__).parent))
