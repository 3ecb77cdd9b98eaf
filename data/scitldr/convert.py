"""Regenerate the BEIR folder (corpus.jsonl, queries.jsonl, qrels/*.tsv) from SciTLDR-A's JSONL.

    python data/scitldr/convert.py /path/to/SciTLDR-A   # the folder holding train/dev/test.jsonl

Corpus: every paper's abstract (its sentences joined by spaces), train + dev + test. Queries: the
first TLDR of each paper (the author-written one where the paper has several); each query's one
relevant document is its own paper's abstract. qrels/dev.tsv judges only the first 128 dev queries
(for a cheap validation loss); all dev abstracts stay in the corpus. qrels/test_all.tsv judges
every distinct TLDR of the test papers (the author's and those written from peer reviews), the
others as queries `<paper>-tldr-<k>`.
"""

import json
import sys
from pathlib import Path

SPLITS = ("train", "dev", "test")
# Validation loss runs several times per training run: 128 dev queries keep it to seconds.
DEV_QUERIES = 128


HEADER = "query-id\tcorpus-id\tscore"


def _query(query_id: str, text: str) -> str:
    return json.dumps({"_id": query_id, "text": text}, ensure_ascii=False)


def convert(source: Path, target: Path) -> dict[str, int]:
    corpus, queries, extra, counts = [], [], [], {}
    every_test_tldr = [HEADER]
    (target / "qrels").mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        qrels = [HEADER]
        for line in (source / f"{split}.jsonl").read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            paper = json.loads(line)
            doc, query = paper["paper_id"], f"{paper['paper_id']}-tldr"
            corpus.append(json.dumps({"_id": doc, "text": " ".join(paper["source"])}, ensure_ascii=False))
            tldrs = list(dict.fromkeys(t.strip() for t in paper["target"]))
            queries.append(_query(query, tldrs[0]))
            if split != "dev" or len(qrels) <= DEV_QUERIES:
                qrels.append(f"{query}\t{doc}\t1")
            if split == "test":
                ids = [query] + [f"{query}-{k}" for k in range(2, len(tldrs) + 1)]
                extra += [_query(q, text) for q, text in zip(ids[1:], tldrs[1:], strict=True)]
                every_test_tldr += [f"{q}\t{doc}\t1" for q in ids]
        (target / "qrels" / f"{split}.tsv").write_text("\n".join(qrels) + "\n", encoding="utf-8")
        counts[split] = len(qrels) - 1
    (target / "qrels" / "test_all.tsv").write_text("\n".join(every_test_tldr) + "\n", encoding="utf-8")
    counts["test_all"] = len(every_test_tldr) - 1
    (target / "corpus.jsonl").write_text("\n".join(corpus) + "\n", encoding="utf-8")
    (target / "queries.jsonl").write_text("\n".join(queries + extra) + "\n", encoding="utf-8")
    return counts


if __name__ == "__main__":
    print(convert(Path(sys.argv[1]), Path(__file__).parent))
