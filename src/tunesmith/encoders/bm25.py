"""BM25 (Okapi, rank-bm25's implementation): the lexical baseline every search engine starts from,
and the miner of hard negatives for contrastive training."""

from __future__ import annotations

import re

import numpy as np

WORD = re.compile(r"\w+")


def bm25_tokens(text: str) -> list[str]:
    """Lower-cased word characters: no stemming or stop words, the plain baseline."""
    return WORD.findall(text.lower())


class BM25:
    def __init__(self, documents: list[str]):
        from rank_bm25 import BM25Okapi

        self.index = BM25Okapi([bm25_tokens(d) for d in documents])

    def scores(self, query: str) -> np.ndarray:
        """One score per document, in document order."""
        return np.asarray(self.index.get_scores(bm25_tokens(query)), dtype=np.float64)

    def top(self, query: str, k: int) -> list[int]:
        """Indices of the k best documents, best first; ties keep document order."""
        return list(np.argsort(-self.scores(query), kind="stable")[:k])
