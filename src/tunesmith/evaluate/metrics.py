"""Quality metrics with 95% bootstrap confidence intervals.

Every metric is split into per-item sufficient statistics (one row per test item) and an
``aggregate`` that turns the column sums of those rows into the score. Corpus metrics (BLEU,
chrF, macro-F1, perplexity) are not means of per-item scores, so this split is what lets the
bootstrap resample *items* and still recompute the corpus score exactly: a resample is a vector
of counts per item, and its statistics are ``counts @ rows``. sacrebleu's own paired bootstrap
(``sacrebleu.significance``) uses the same two methods of its metrics that we call here.

Shares (exact match, ROUGE-L, accuracy, macro-F1, parse rate) are reported in percent so that a
table of them reads on one scale with BLEU and chrF.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

BOOTSTRAP_RESAMPLES = 1000
CONFIDENCE = 0.95
LOWER_IS_BETTER = {"perplexity"}  # metrics whose gain is a fall


@dataclass(frozen=True)
class MetricValue:
    value: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high}


@dataclass(frozen=True)
class ItemStats:
    """Sufficient statistics: ``rows[i]`` belongs to test item i; ``aggregate(rows.sum(0))`` scores."""

    rows: np.ndarray
    aggregate: Callable[[np.ndarray], float]

    def score(self) -> float:
        return self.aggregate(self.rows.sum(axis=0))


def _resampled_scores(stats: ItemStats, picks: np.ndarray) -> np.ndarray:
    n = len(stats.rows)
    # How often each item was drawn per resample; a [resamples, n] int matrix instead of
    # materialising [resamples, n, stats] rows keeps memory flat for wide chrF statistics.
    counts = np.zeros((len(picks), n), dtype=np.float64)
    np.add.at(counts, (np.arange(len(picks))[:, None], picks), 1.0)
    sums = counts @ stats.rows.astype(np.float64)
    return np.array([stats.aggregate(row) for row in sums])


def _interval(value: float, scores: np.ndarray, level: float) -> MetricValue:
    tail = (1.0 - level) / 2 * 100
    low, high = np.nanpercentile(scores, [tail, 100 - tail])
    return MetricValue(float(value), float(low), float(high))


def bootstrap(
    stats: ItemStats, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0, level: float = CONFIDENCE
) -> MetricValue:
    """Point estimate plus a percentile-bootstrap interval from resampling items with replacement."""
    n = len(stats.rows)
    if n == 0:
        return MetricValue(math.nan, math.nan, math.nan)
    picks = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    return _interval(stats.score(), _resampled_scores(stats, picks), level)


def paired_difference(
    a: ItemStats, b: ItemStats, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0, level: float = CONFIDENCE
) -> MetricValue:
    """score(a) - score(b) on the same items, with a paired bootstrap interval: both systems are
    rescored on the same resampled items, so item difficulty cancels and the interval is the one
    that says whether the gain is real (it excludes 0) or noise."""
    n = len(a.rows)
    if n == 0 or len(b.rows) != n:
        raise ValueError("a paired difference needs both systems scored on the same items")
    picks = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    scores = _resampled_scores(a, picks) - _resampled_scores(b, picks)
    return _interval(a.score() - b.score(), scores, level)


def percent_of(sums: np.ndarray) -> float:
    return 100.0 * sums[0] / sums[1] if sums[1] else math.nan


def share_stats(hits: Sequence[float]) -> ItemStats:
    rows = np.array([[float(h), 1.0] for h in hits]).reshape(-1, 2)
    return ItemStats(rows, percent_of)


def _reference_streams(references: Sequence[Sequence[str]]) -> list[list[str | None]]:
    """sacrebleu wants one stream per reference slot; items with fewer references get ``None``."""
    width = max((len(refs) for refs in references), default=0)
    return [[refs[i] if i < len(refs) else None for refs in references] for i in range(width)]


def _sacrebleu_stats(metric, hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> ItemStats:
    rows = np.array(metric._extract_corpus_statistics(list(hypotheses), _reference_streams(references)))
    return ItemStats(rows, lambda sums: float(metric._compute_score_from_stats(sums).score))


def bleu_stats(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> ItemStats:
    """Corpus BLEU (sacrebleu defaults: 13a tokenizer, exp smoothing) with several references per item."""
    from sacrebleu.metrics import BLEU

    return _sacrebleu_stats(BLEU(), hypotheses, references)


def chrf_stats(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> ItemStats:
    """Corpus chrF (character 6-grams, beta 2), best-matching reference per item as sacrebleu does."""
    from sacrebleu.metrics import CHRF

    return _sacrebleu_stats(CHRF(), hypotheses, references)


def rouge_l_stats(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> ItemStats:
    """Mean over items of the ROUGE-L F-measure against the best reference (no stemming)."""
    from rouge_score.rouge_scorer import RougeScorer

    scorer = RougeScorer(["rougeL"], use_stemmer=False)
    return share_stats(
        [
            scorer.score_multi(list(refs), hyp)["rougeL"].fmeasure
            for hyp, refs in zip(hypotheses, references, strict=True)
        ]
    )


def exact_match_stats(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> ItemStats:
    """Share of items whose output equals one of its references after stripping whitespace."""
    return share_stats(
        [hyp.strip() in {ref.strip() for ref in refs} for hyp, refs in zip(hypotheses, references, strict=True)]
    )


ARTICLES = re.compile(r"\b(a|an|the)\b")
NOT_WORD = re.compile(r"[^\w\s]")


def normalise_answer(text: str) -> str:
    """SQuAD's answer normalisation: lower case, punctuation and the articles a/an/the removed, runs
    of whitespace made one space ("The Harbour, 1,204." -> "harbour 1204")."""
    return " ".join(ARTICLES.sub(" ", NOT_WORD.sub("", text.lower())).split())


def normalised_exact_match_stats(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> ItemStats:
    """Share of items whose normalised output equals one of its normalised references."""
    return share_stats(
        [
            normalise_answer(hyp) in {normalise_answer(ref) for ref in refs}
            for hyp, refs in zip(hypotheses, references, strict=True)
        ]
    )


def contains_stats(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> ItemStats:
    """Share of items whose normalised output holds one of its normalised references as whole words: an
    answer given in a sentence counts ("It was founded in 1987." holds "1987"; "19870" does not)."""
    return share_stats(
        [
            any(f" {normalise_answer(ref)} " in f" {normalise_answer(hyp)} " for ref in refs if normalise_answer(ref))
            for hyp, refs in zip(hypotheses, references, strict=True)
        ]
    )


def parse_rate_stats(generations: Sequence[str], labels: Sequence[str]) -> ItemStats:
    """Share of free generations that are a valid label once surrounding whitespace is stripped."""
    valid = set(labels)
    return share_stats([text.strip() in valid for text in generations])


def accuracy_stats(predictions: Sequence[str], gold: Sequence[str]) -> ItemStats:
    return share_stats([p == g for p, g in zip(predictions, gold, strict=True)])


def macro_f1_stats(predictions: Sequence[str], gold: Sequence[str], labels: Sequence[str]) -> ItemStats:
    """Unweighted mean of per-label F1 over the labels that occur (in gold or predicted) in the sample.

    Per item the row holds one-hot true-positive, false-positive and false-negative counts per
    label, so that a resample's sums are its confusion counts.
    """
    index = {label: i for i, label in enumerate(labels)}
    c = len(labels)
    rows = np.zeros((len(gold), 3 * c))
    for row, p, g in zip(rows, predictions, gold, strict=True):
        if p == g:
            row[index[g]] = 1
        else:
            if p in index:
                row[c + index[p]] = 1
            row[2 * c + index[g]] = 1

    def aggregate(sums: np.ndarray) -> float:
        tp, fp, fn = sums[:c], sums[c : 2 * c], sums[2 * c :]
        seen = (tp + fp + fn) > 0
        if not seen.any():
            return math.nan
        f1 = 2 * tp[seen] / (2 * tp[seen] + fp[seen] + fn[seen])
        return float(100.0 * f1.mean())

    return ItemStats(rows, aggregate)


def perplexity_stats(nll_sums: Sequence[float], token_counts: Sequence[int]) -> ItemStats:
    """exp(total negative log-likelihood / total tokens): per token over the corpus, not per item."""
    rows = np.array([[s, n] for s, n in zip(nll_sums, token_counts, strict=True)], dtype=np.float64).reshape(-1, 2)
    return ItemStats(rows, lambda sums: math.exp(sums[0] / sums[1]) if sums[1] else math.nan)
