import math

import numpy as np
import pytest
import sacrebleu

from tunesmith.evaluate import metrics


def _bleu(precisions):
    return 100 * math.exp(sum(math.log(p) for p in precisions) / 4)


@pytest.mark.parametrize(
    ("hyps", "refs", "expected"),
    [
        (["a b c d e"], [["a b c d e"]], 100.0),
        # p1..p4 = 4/5, 3/4, 2/3, 1/2; equal length, so no brevity penalty.
        (["a b c d e"], [["a b c d f"]], _bleu([4 / 5, 3 / 4, 2 / 3, 1 / 2])),
        # A second, unrelated reference neither helps nor hurts: counts clip against the best.
        (["a b c d e"], [["a b c d f", "x y z"]], _bleu([4 / 5, 3 / 4, 2 / 3, 1 / 2])),
        # Corpus BLEU pools n-gram counts over items (variable reference counts per item).
        (
            ["a b c d e", "a b c d e"],
            [["a b c d f", "x y z"], ["a b c d e"]],
            _bleu([9 / 10, 7 / 8, 5 / 6, 3 / 4]),
        ),
    ],
)
def test_bleu_matches_hand_computation(hyps, refs, expected):
    assert metrics.bleu_stats(hyps, refs).score() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    ("hyps", "refs", "expected"),
    [
        (["the cat sat"], [["the cat sat"]], 100.0),
        (["xyz"], [["abc"]], 0.0),
        (["the cat sat", "a dog"], [["the cat sat on", "a cat"], ["the dog"]], None),
    ],
)
def test_chrf(hyps, refs, expected):
    if expected is None:  # multi-reference: must agree with sacrebleu's own corpus chrF
        expected = sacrebleu.corpus_chrf(hyps, [[r[0] for r in refs], [r[1] if len(r) > 1 else None for r in refs]])
        expected = expected.score
    assert metrics.chrf_stats(hyps, refs).score() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    ("hyps", "refs", "expected"),
    [
        # LCS(a b c d, a x c d) = 3 -> P = R = F = 3/4; the other reference scores lower.
        (["a b c d"], [["a x c d", "q"]], 75.0),
        # LCS = 2, P = 1, R = 1/2 -> F = 2/3; mean of the two items.
        (["a b c d", "a b"], [["a x c d"], ["a b c d"]], 100 * (3 / 4 + 2 / 3) / 2),
        (["A B"], [["a b"]], 100.0),  # rouge-score lowercases
    ],
)
def test_rouge_l_best_reference(hyps, refs, expected):
    assert metrics.rouge_l_stats(hyps, refs).score() == pytest.approx(expected)


@pytest.mark.parametrize(
    ("hyps", "refs", "expected"),
    [
        (["A ", "b"], [["x", "A"], ["c"]], 50.0),
        (["a"], [["A"]], 0.0),  # case matters
        (["\n a b \n"], [["a b"]], 100.0),
    ],
)
def test_exact_match(hyps, refs, expected):
    assert metrics.exact_match_stats(hyps, refs).score() == pytest.approx(expected)


@pytest.mark.parametrize(
    ("preds", "gold", "labels", "accuracy", "macro_f1"),
    [
        # A: tp1 fp1 -> 2/3; B: tp1 fn1 -> 2/3; C: 1.
        (["A", "A", "B", "C"], ["A", "B", "B", "C"], ["A", "B", "C"], 75.0, 100 * 7 / 9),
        # A label that never occurs (D) does not drag the macro average down.
        (["A", "A", "B", "C"], ["A", "B", "B", "C"], ["A", "B", "C", "D"], 75.0, 100 * 7 / 9),
        # A prediction outside the label set is a miss for the gold label only.
        (["A", "???"], ["A", "B"], ["A", "B"], 50.0, 100 * (1 + 0) / 2),
    ],
)
def test_accuracy_and_macro_f1(preds, gold, labels, accuracy, macro_f1):
    assert metrics.accuracy_stats(preds, gold).score() == pytest.approx(accuracy)
    assert metrics.macro_f1_stats(preds, gold, labels).score() == pytest.approx(macro_f1)


@pytest.mark.parametrize(
    ("texts", "expected"),
    [([" LOC\n", "Location", "NUM"], 200 / 3), (["loc", "LOC."], 0.0)],
)
def test_parse_rate(texts, expected):
    assert metrics.parse_rate_stats(texts, ["LOC", "NUM"]).score() == pytest.approx(expected)


@pytest.mark.parametrize(
    ("nll", "tokens", "expected"),
    [([2.0, 4.0], [1, 3], math.exp(6 / 4)), ([0.0], [5], 1.0)],
)
def test_perplexity_is_per_token_over_the_corpus(nll, tokens, expected):
    assert metrics.perplexity_stats(nll, tokens).score() == pytest.approx(expected)


def _coin_accuracy(n: int):
    hits = np.random.default_rng(1).random(n) < 0.7
    return metrics.accuracy_stats(["y" if h else "n" for h in hits], ["y"] * n)


@pytest.mark.parametrize(
    "stats",
    [
        _coin_accuracy(60),
        metrics.bleu_stats(["a b c d e", "a b c x y", "q r s t"] * 5, [["a b c d e"], ["a b c d e"], ["q r s t"]] * 5),
        metrics.perplexity_stats([2.0, 8.0, 3.0, 1.0], [2, 3, 2, 1]),
    ],
)
def test_bootstrap_interval_contains_the_point_estimate_and_is_seeded(stats):
    ci = metrics.bootstrap(stats, resamples=300, seed=3)
    assert ci.low <= ci.value <= ci.high
    assert ci.low < ci.high
    assert metrics.bootstrap(stats, resamples=300, seed=3) == ci


def test_bootstrap_interval_narrows_with_more_items():
    widths = []
    for n in (40, 640):
        ci = metrics.bootstrap(_coin_accuracy(n), resamples=500)
        widths.append(ci.high - ci.low)
    # The standard error shrinks like 1/sqrt(n): 16x the items, about a quarter of the width.
    assert widths[1] < widths[0] / 2.5


def test_bootstrap_of_constant_items_is_a_point():
    ci = metrics.bootstrap(metrics.accuracy_stats(["a"] * 10, ["a"] * 10), resamples=50)
    assert (ci.value, ci.low, ci.high) == (100.0, 100.0, 100.0)


def test_paired_difference_sees_a_consistent_gain_that_unpaired_intervals_blur():
    """Items vary a lot in difficulty; system A beats B by ~5 points on every item. The separate
    intervals overlap, the paired interval of the difference excludes 0."""
    rng = np.random.default_rng(1)
    difficulty = rng.uniform(0, 1, 200)
    b_hits = (rng.uniform(0, 1, 200) < difficulty).astype(float)
    a_hits = np.maximum(b_hits, (rng.uniform(0, 1, 200) < 0.05).astype(float))
    a, b = (
        metrics.accuracy_stats(["x" if h else "y" for h in a_hits], ["x"] * 200),
        metrics.accuracy_stats(["x" if h else "y" for h in b_hits], ["x"] * 200),
    )
    diff = metrics.paired_difference(a, b, seed=0)
    assert diff.value == pytest.approx(a.score() - b.score())
    assert 0 < diff.low <= diff.value <= diff.high
    sep_a, sep_b = metrics.bootstrap(a, seed=0), metrics.bootstrap(b, seed=1)
    assert sep_a.low < sep_b.high  # unpaired: overlapping, inconclusive
    with pytest.raises(ValueError, match="same items"):
        metrics.paired_difference(a, metrics.accuracy_stats(["x"], ["x"]))


@pytest.mark.parametrize(
    ("answer", "reference", "exact", "contains"),
    [
        ("The Vell.", "Vell", True, True),  # case, punctuation and articles do not count
        ("12400", "12,400", True, True),
        ("It was founded in 1632.", "1632", False, True),  # the answer in a sentence
        ("In 16320.", "1632", False, False),  # whole words only
        ("Orla", "Orla Vennick", False, False),
        ("", "1632", False, False),
    ],
)
def test_qa_answers_match_after_normalisation(answer, reference, exact, contains):
    assert metrics.normalised_exact_match_stats([answer], [[reference]]).score() == (100.0 if exact else 0.0)
    assert metrics.contains_stats([answer], [[reference]]).score() == (100.0 if contains else 0.0)
