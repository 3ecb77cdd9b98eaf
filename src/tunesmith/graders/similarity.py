"""``text_similarity`` metrics, each a score in [0, 1] of ``text`` against ``reference``.

Reference libraries where they exist: fuzzy_match is rapidfuzz's ``fuzz.ratio`` (the normalised
Indel similarity, 2 * matched characters / total characters), bleu is sacrebleu's sentence BLEU
(its default 13a tokeniser and exponential smoothing) / 100, gleu is nltk's sentence GLEU (Google
BLEU, n-grams 1..4), rouge_N and rouge_l are rouge-score's F-measure (its own lowercasing
tokeniser, no stemmer). meteor is nltk's METEOR with exact and Porter-stem matching only: its
synonym stage needs the WordNet data, which cannot be downloaded here, so every synonym lookup
finds none. cosine is the cosine of the two texts' sentence embeddings from an encoder (the
built-in ``minilm-l6`` unless the caller names another).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

ROUGE = {f"rouge_{n}": f"rouge{n}" for n in (1, 2, 3, 4, 5)} | {"rouge_l": "rougeL"}


def _words(text: str) -> list[str]:
    return text.split()


def fuzzy_match(text: str, reference: str) -> float:
    from rapidfuzz import fuzz

    return fuzz.ratio(text, reference) / 100


def bleu(text: str, reference: str) -> float:
    import sacrebleu

    return sacrebleu.sentence_bleu(text, [reference]).score / 100


def gleu(text: str, reference: str) -> float:
    from nltk.translate.gleu_score import sentence_gleu

    return float(sentence_gleu([_words(reference)], _words(text)))


class _NoSynonyms:
    """Stands in for nltk's WordNet reader: METEOR's synonym stage matches nothing."""

    def synsets(self, *args, **kwargs):
        return []


def meteor(text: str, reference: str) -> float:
    from nltk.translate.meteor_score import meteor_score

    if not text.strip() or not reference.strip():
        return 0.0
    return float(meteor_score([_words(reference)], _words(text), wordnet=_NoSynonyms()))


@cache
def _rouge(kind: str):
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer([kind], use_stemmer=False)


def rouge(metric: str) -> Callable[[str, str], float]:
    kind = ROUGE[metric]
    return lambda text, reference: float(_rouge(kind).score(reference, text)[kind].fmeasure)


def cosine(encode: Callable[[list[str]], object]) -> Callable[[str, str], float]:
    """The metric for an ``encode(texts) -> [n, dim] array`` (a tunesmith Encoder's ``encode``)."""
    import numpy as np

    def score(text: str, reference: str) -> float:
        a, b = np.asarray(encode([text, reference]), dtype=np.float64)
        norm = float(np.linalg.norm(a) * np.linalg.norm(b))
        return float(a @ b / norm) if norm > 0 else 0.0

    return score


def metric(name: str, encode: Callable[[list[str]], object] | None = None) -> Callable[[str, str], float]:
    """The function ``(text, reference) -> score`` of the metric called ``name``."""
    if name == "cosine":
        if encode is None:
            raise ValueError("the cosine metric needs an encoder")
        return cosine(encode)
    if name in ROUGE:
        return rouge(name)
    return {"fuzzy_match": fuzzy_match, "bleu": bleu, "gleu": gleu, "meteor": meteor}[name]
