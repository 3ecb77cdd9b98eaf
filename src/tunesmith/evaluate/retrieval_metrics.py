"""Ranking metrics per query, as bootstrap-ready `ItemStats` (one row per query, in percent).

nDCG@10 (linear gain: the relevance grade, log2 discount, ideal = the query's judged documents
sorted by grade), MRR@10, Recall@100 and P@10, as BEIR and trec_eval define them. A ranking is the
documents sorted by score, best first; tied scores keep corpus order, so every score is
reproducible (trec_eval also breaks ties deterministically, by document id).

Hybrid search fuses rankings by reciprocal rank (`fuse`), as Elasticsearch, OpenSearch and Vespa
combine a lexical and a dense retriever: no weights to tune, and the two systems' scores, on
incomparable scales, are never mixed.
"""

from __future__ import annotations

import math

import numpy as np

from tunesmith.evaluate.metrics import ItemStats, percent_of

CUTOFFS = {"ndcg@10": 10, "mrr@10": 10, "recall@100": 100, "p@10": 10}
DEPTH = max(CUTOFFS.values())
RRF_K = 60  # Cormack, Clarke and Buettcher (SIGIR 2009); the default of the search engines above


def rank(scores: np.ndarray, depth: int = DEPTH) -> np.ndarray:
    """[queries, docs] scores -> [queries, depth] document indices, best first, ties in corpus order."""
    depth = min(depth, scores.shape[1])
    if depth < scores.shape[1]:
        # Partition first (O(docs)), but keep every document tied with the depth-th score so the
        # stable sort below still sees the whole tie.
        kth = -np.partition(-scores, depth - 1, axis=1)[:, depth - 1 : depth]
        rows = []
        for row, cut in zip(scores, kth[:, 0], strict=True):
            keep = np.flatnonzero(row >= cut)
            rows.append(keep[np.argsort(-row[keep], kind="stable")][:depth])
        return np.stack(rows)
    return np.argsort(-scores, axis=1, kind="stable")[:, :depth]


def fuse(rankings: list[np.ndarray], k: int = RRF_K, depth: int = DEPTH) -> np.ndarray:
    """Reciprocal rank fusion of [queries, depth] rankings: a document scores the sum of 1 / (k + its
    rank, from 1) over the rankings that hold it; best first, ties in corpus order."""
    fused = []
    for lists in zip(*rankings, strict=True):
        scores: dict[int, float] = {}
        for ranking in lists:
            for place, doc in enumerate(ranking.tolist(), start=1):
                scores[doc] = scores.get(doc, 0.0) + 1.0 / (k + place)
        fused.append(sorted(scores, key=lambda doc: (-scores[doc], doc))[:depth])
    return np.array(fused, dtype=np.int64)


def query_metrics(ranking: list[int], relevant: dict[int, int]) -> dict[str, float]:
    """The four metrics of one query; `relevant` maps document index -> grade (> 0)."""
    gains = [relevant.get(doc, 0) for doc in ranking[:DEPTH]]
    dcg = sum(g / math.log2(i + 2) for i, g in enumerate(gains[:10]))
    ideal = sorted(relevant.values(), reverse=True)[:10]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    first = next((i for i, g in enumerate(gains[:10]) if g > 0), None)
    return {
        "ndcg@10": dcg / idcg if idcg else 0.0,
        "mrr@10": 1.0 / (first + 1) if first is not None else 0.0,
        "recall@100": sum(g > 0 for g in gains[:100]) / len(relevant),
        "p@10": sum(g > 0 for g in gains[:10]) / 10,
    }


def query_groups(relevant: list[dict[int, int]]) -> list[int]:
    """Each query's group: queries with the same judgements (documents and grades) share one."""
    groups: dict[frozenset, int] = {}
    return [groups.setdefault(frozenset(rel.items()), len(groups)) for rel in relevant]


def retrieval_stats(rankings: np.ndarray, relevant: list[dict[int, int]]) -> dict[str, ItemStats]:
    """Each metric as the mean over queries, with one row ([sum of values, queries]) per group of
    queries judged against the same documents, so the bootstrap resamples those groups: several
    queries written for one document (SciTLDR's TLDRs of one paper) are not independent draws, and
    resampling them one by one would make the intervals too narrow. Queries with their own
    judgements are groups of one."""
    per_query = [query_metrics(list(r), rel) for r, rel in zip(rankings, relevant, strict=True)]
    group = query_groups(relevant)
    stats = {}
    for name in CUTOFFS:
        rows = np.zeros((max(group, default=-1) + 1, 2))
        np.add.at(rows, group, np.array([[q[name], 1.0] for q in per_query]).reshape(-1, 2))
        stats[name] = ItemStats(rows, percent_of)
    return stats
