"""Retrieval-augmented prompts (eval.rag): the top-k passages of a corpus before each question.

The query is the text of the item's last user turn (the question). Retrievers:

* `bm25`: Okapi BM25 on lower-cased words (encoders/bm25.py);
* an encoder (built-in name, sentence-transformers folder or encoder run folder): the cosine of
  pooled embeddings (dot product where the checkpoint does not normalise), corpus embeddings cached
  (evaluate/embedding_cache.py);
* `hybrid`: BM25 and `rag.encoder`, each ranking its top 100, fused by reciprocal rank (k 60), as
  `eval.task: retrieval` fuses them (evaluate/retrieval_metrics.py).

Ties keep corpus order, so a ranking is reproducible. The passages go into the last user turn,
rendered by the model's own chat template like any prompt:

    Context:
    [1] <best passage>
    [2] <second passage>

    <the question as in the test data>

The user turn rather than the system prompt: the system prompt stays what the model was trained
with (data.system or the template's own), and templates without a system role work too.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from tunesmith.config import RagConfig
from tunesmith.data.formats import Message
from tunesmith.encoders.bm25 import BM25
from tunesmith.encoders.data import Passages
from tunesmith.errors import TunesmithError
from tunesmith.evaluate.embedding_cache import embed_cached
from tunesmith.evaluate.retrieval_metrics import DEPTH, RRF_K, fuse, rank

BM25_NAME, HYBRID_NAME = "bm25", "hybrid"
CONTEXT_HEADER = "Context:"


@dataclass(frozen=True)
class Retrieved:
    """One item's passages, best first."""

    ids: tuple[str, ...]
    texts: tuple[str, ...]


def question(prompt: tuple[Message, ...]) -> str:
    """The retrieval query: the last user turn's text."""
    for message in reversed(prompt):
        if message.role == "user":
            return message.content
    return ""


def context_block(texts: tuple[str, ...]) -> str:
    """The passages as the prompt shows them: numbered from 1, best first."""
    lines = [CONTEXT_HEADER, *(f"[{n}] {' '.join(text.split())}" for n, text in enumerate(texts, 1))]
    return "\n".join(lines)


def with_context(prompt: tuple[Message, ...], retrieved: Retrieved) -> tuple[Message, ...]:
    """`prompt` with the passages before the text of its last user turn."""
    for i in range(len(prompt) - 1, -1, -1):
        if prompt[i].role == "user":
            turn = replace(prompt[i], content=f"{context_block(retrieved.texts)}\n\n{prompt[i].content}")
            return (*prompt[:i], turn, *prompt[i + 1 :])
    raise TunesmithError("eval.rag: a test item has no user turn to put the retrieved passages in")


def _dense_ranking(name: str, corpus: list[str], queries: list[str], depth: int, batch_size: int) -> np.ndarray:
    from tunesmith.encoders.model import load_encoder

    encoder = load_encoder(name)
    documents = embed_cached(encoder, corpus, "passages", batch_size)
    return rank(encoder.encode(queries, batch_size) @ documents.T, depth)


def _bm25_ranking(corpus: list[str], queries: list[str], depth: int) -> np.ndarray:
    index = BM25(corpus)
    return rank(np.stack([index.scores(q) for q in queries]), depth)


def rankings(settings: RagConfig, corpus: list[str], queries: list[str], batch_size: int) -> np.ndarray:
    """[queries, k] passage indices, best first, by `settings.retriever`."""
    k = min(settings.k, len(corpus))
    if settings.retriever == BM25_NAME:
        return _bm25_ranking(corpus, queries, k)
    if settings.retriever == HYBRID_NAME:
        both = [
            _bm25_ranking(corpus, queries, DEPTH),
            _dense_ranking(settings.encoder, corpus, queries, DEPTH, batch_size),
        ]
        return fuse(both, RRF_K, k)
    return _dense_ranking(settings.retriever, corpus, queries, k, batch_size)


def retrieve(settings: RagConfig, passages: Passages, queries: list[str], batch_size: int) -> list[Retrieved]:
    """Each query's top-k passages."""
    ranked = rankings(settings, passages.texts, queries, batch_size)
    return [
        Retrieved(tuple(passages.ids[i] for i in row), tuple(passages.texts[i] for i in row)) for row in ranked.tolist()
    ]


def describe(settings: RagConfig, passages: Passages, retrieved: list[Retrieved]) -> dict:
    """eval.json's `rag` entry: what was retrieved from where, and each item's passage ids."""
    retriever = settings.retriever
    if retriever == HYBRID_NAME:
        retriever = f"hybrid (BM25 + {settings.encoder}, reciprocal rank fusion, k {RRF_K})"
    return {
        "corpus": settings.corpus,
        "passages": len(passages.ids),
        "retriever": retriever,
        "k": min(settings.k, len(passages.ids)),
        "retrieved": [list(r.ids) for r in retrieved],
    }
