"""Ranking metrics against hand-computed values, ties and several relevant documents included."""

import math

import numpy as np
import pytest

from tunesmith.encoders.bm25 import BM25
from tunesmith.evaluate.metrics import bootstrap, paired_difference
from tunesmith.evaluate.retrieval_metrics import fuse, query_groups, query_metrics, rank, retrieval_stats

L3, L5 = math.log2(3), math.log2(5)

CASES = [
    # (name, scores, relevant {doc: grade}, expected ranking head, metrics)
    (
        # Ties keep corpus order: 0 before 2 (both 0.9), 1 before 4 (both 0.5). Two relevant, graded 1 and 2.
        "ties and two graded relevant",
        [0.9, 0.5, 0.9, 0.1, 0.5],
        {2: 1, 4: 2},
        [0, 2, 1, 4, 3],
        {"ndcg@10": (1 / L3 + 2 / L5) / (2 + 1 / L3), "mrr@10": 0.5, "recall@100": 1.0, "p@10": 0.2},
    ),
    (
        "relevant first",
        [0.1, 0.8, 0.3],
        {1: 1},
        [1, 2, 0],
        {"ndcg@10": 1.0, "mrr@10": 1.0, "recall@100": 1.0, "p@10": 0.1},
    ),
    (
        "relevant below the top 10",
        [1.0 - i / 20 for i in range(12)],
        {11: 1},
        list(range(12)),
        {"ndcg@10": 0.0, "mrr@10": 0.0, "recall@100": 1.0, "p@10": 0.0},
    ),
    (
        "three relevant, one missed by the top 10 but found by the top 100",
        [1.0 - i / 20 for i in range(12)],
        {0: 1, 3: 1, 10: 1},
        list(range(12)),
        {"ndcg@10": (1 + 1 / math.log2(5)) / (1 + 1 / L3 + 1 / 2), "mrr@10": 1.0, "recall@100": 1.0, "p@10": 0.2},
    ),
]


@pytest.mark.parametrize(("name", "scores", "relevant", "ranking", "expected"), CASES, ids=[c[0] for c in CASES])
def test_query_metrics_hand_computed(name, scores, relevant, ranking, expected):
    ranked = rank(np.array([scores]))[0]
    assert list(ranked) == ranking
    got = query_metrics(list(ranked), relevant)
    assert got == pytest.approx(expected, abs=1e-9)


def test_recall_at_100_counts_only_the_top_100():
    scores = np.array([[1.0 - i / 1000 for i in range(150)]])
    got = query_metrics(list(rank(scores)[0]), {50: 1, 120: 1})
    assert got["recall@100"] == 0.5


def test_rank_keeps_ties_at_the_cut_in_corpus_order():
    scores = np.zeros((1, 300))
    scores[0, [250, 7]] = 1.0  # two winners, then 298 tied documents
    ranked = rank(scores)[0]
    assert list(ranked[:5]) == [7, 250, 0, 1, 2]
    assert len(ranked) == 100


def test_retrieval_stats_are_means_in_percent():
    scores = np.array([CASES[0][1], [0.1, 0.8, 0.3, 0.0, 0.0]])
    stats = retrieval_stats(rank(scores), [{2: 1, 4: 2}, {1: 1}])
    assert stats["mrr@10"].score() == pytest.approx(75.0)
    assert stats["p@10"].score() == pytest.approx(15.0)
    assert stats["ndcg@10"].score() == pytest.approx(100 * (CASES[0][4]["ndcg@10"] + 1) / 2)


def test_queries_judged_against_the_same_documents_are_resampled_together():
    """Several queries written for one document (SciTLDR's TLDRs of one paper) are one bootstrap
    unit: asking every query twice changes neither a score nor its interval, alone or paired."""
    assert query_groups([{1: 1}, {1: 1}, {1: 2}, {1: 1, 2: 1}, {2: 1, 1: 1}]) == [0, 0, 1, 2, 2]
    rng = np.random.default_rng(0)
    scores, other = rng.random((30, 50)), rng.random((30, 50))
    relevant = [{i: 1} for i in range(30)]
    twice = [r for r in relevant for _ in (0, 1)]
    once = retrieval_stats(rank(scores), relevant)
    repeated = retrieval_stats(rank(np.repeat(scores, 2, axis=0)), twice)
    once_other = retrieval_stats(rank(other), relevant)
    repeated_other = retrieval_stats(rank(np.repeat(other, 2, axis=0)), twice)
    for name in once:
        assert len(repeated[name].rows) == 30
        assert bootstrap(repeated[name]) == bootstrap(once[name])
        assert paired_difference(repeated[name], repeated_other[name]) == paired_difference(
            once[name], once_other[name]
        )


def test_reciprocal_rank_fusion_hand_computed():
    lexical = np.array([[0, 1, 2], [4, 3, 1]])
    dense = np.array([[2, 0, 3], [3, 4, 0]])
    # k 1, query 0: doc 0 = 1/2 + 1/3, doc 2 = 1/4 + 1/2, doc 1 = 1/3, doc 3 = 1/4 (only one list holds each).
    # Query 1: docs 4 and 3 tie at 1/2 + 1/3, so corpus order puts 3 first; then 1 and 0 tie at 1/4.
    assert fuse([lexical, dense], k=1, depth=3).tolist() == [[0, 2, 1], [3, 4, 0]]
    # k 60 (the default) flattens the ranks: a document both lists hold beats one list's winner.
    assert fuse([np.array([[5, 6, 7]]), np.array([[8, 9, 7]])]).tolist() == [[7, 5, 8, 6, 9]]


def test_bm25_prefers_documents_sharing_rare_query_words():
    docs = ["the cat sat on the mat", "dogs chase cats", "protein folding structures", "the the the"]
    index = BM25(docs)
    assert index.top("protein structures", 1) == [2]
    assert index.top("the cat", 2)[0] == 0
