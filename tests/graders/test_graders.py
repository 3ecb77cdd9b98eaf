"""string_check, text_similarity and templates against OpenAI's documented semantics and
hand-computed (or reference-library) values."""

import math

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from tunesmith.graders import GraderError, grade, make_sample, parse_grader

ITEM = {"answer": "Paris", "city": {"names": ["Paris", "Lutetia"]}, "n": 3}


def string_check(operation, input="{{sample.output_text}}", reference="{{item.answer}}", **extra):
    return {
        "type": "string_check",
        "name": "check",
        "operation": operation,
        "input": input,
        "reference": reference,
        **extra,
    }


@pytest.mark.parametrize(
    "operation, output, reward",
    [
        ("eq", "Paris", 1.0),
        ("eq", "paris", 0.0),  # case-sensitive
        ("eq", "Paris.", 0.0),
        ("ne", "Paris", 0.0),
        ("ne", "Lyon", 1.0),
        ("like", "It is Paris.", 1.0),  # substring
        ("like", "It is PARIS.", 0.0),  # case-sensitive
        ("ilike", "It is PARIS.", 1.0),
        ("ilike", "Lyon", 0.0),
    ],
)
def test_string_check(operation, output, reward):
    result = grade(parse_grader(string_check(operation)), make_sample(output), ITEM)
    assert result.reward == reward
    assert not any(result.errors.values())


@pytest.mark.parametrize(
    "reference, output, reward",
    [
        ("{{item.city.names[1]}}", "Lutetia", 1.0),  # nested path, list index
        ("{{ item.city.names.0 }}", "Paris", 1.0),  # spaces, dotted index
        ("{{item.n}}", "3", 1.0),  # a number is inserted as JSON
        ("{{item.city.names}}", '["Paris", "Lutetia"]', 1.0),
        ("{{sample.output_json.city}}", '{"city": "Paris"}', 0.0),  # input is the whole JSON text, not "Paris"
    ],
)
def test_templates(reference, output, reward):
    assert grade(parse_grader(string_check("eq", reference=reference)), make_sample(output), ITEM).reward == reward


def test_output_json_and_tools():
    sample = make_sample('{"city": "Paris", "n": [1, 2]}')
    grader = parse_grader(
        string_check("eq", input="{{sample.output_json.city}}/{{sample.output_json.n[1]}}", reference="Paris/2")
    )
    assert grade(grader, sample, ITEM).reward == 1.0
    calls = [{"id": "c1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}]
    tools = parse_grader(string_check("like", input="{{sample.output_tools}}", reference='"name": "weather"'))
    assert grade(tools, make_sample("", calls), ITEM).reward == 1.0


@pytest.mark.parametrize(
    "reference, output, flag, message",
    [
        (
            "{{item.missing}}",
            "x",
            "invalid_variable_error",
            "{{item.missing}}: item has no field 'missing' (it has 'answer', 'city', 'n')",
        ),
        (
            "{{item.city.names[5]}}",
            "x",
            "invalid_variable_error",
            "{{item.city.names.5}}: item.city.names has no field '5' (it has 2 entries)",
        ),
        ("{{item.n.x}}", "x", "invalid_variable_error", "{{item.n.x}}: item.n has no field 'x' (it is a number)"),
        (
            "{{sample.output_json.city}}",
            "not json",
            "sample_parse_error",
            "{{sample.output_json.city}}: sample.output_json has no field 'city' (it is null)",
        ),
        (
            "{{sample.output_json.town}}",
            '{"city": "Paris"}',
            "invalid_variable_error",
            "{{sample.output_json.town}}: sample.output_json has no field 'town' (it has 'city')",
        ),
    ],
)
def test_missing_field_scores_zero_and_names_it(reference, output, flag, message):
    result = grade(parse_grader(string_check("eq", reference=reference)), make_sample(output), ITEM)
    assert result.reward == 0.0 and result.errors[flag]
    assert result.messages == [message]


@pytest.mark.parametrize(
    "raw, message",
    [
        (
            string_check("eq", reference="{{answer}}"),
            "reference: Value error, {{answer}}: a reference starts with item.",
        ),
        (string_check("eq", input="{{sample.text}}"), "input: {{sample.text}}: the sample has no field 'text'"),
        (string_check("contains"), "operation: Input should be 'eq', 'ne', 'like' or 'ilike'"),
        ({"type": "string_check", "name": "x", "input": "a", "operation": "eq"}, "reference: missing required field"),
        (string_check("eq", extra_field=1), "extra_field: unknown field"),
        ({"type": "label_model", "name": "x"}, "grader type 'label_model' is not supported"),
        ({"type": "regex", "name": "x"}, "unknown grader type 'regex'"),
        ([1], "a grader is a JSON object, got list"),
    ],
)
def test_refused_graders(raw, message):
    with pytest.raises(GraderError) as error:
        parse_grader(raw)
    assert message.replace("Value error, ", "") in str(error.value)


def _ngram_f(hyp: str, ref: str, n: int) -> float:
    """ROUGE-N F1 by hand: clipped n-gram overlap over lowercased words."""

    def grams(text):
        words = text.lower().split()
        return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]

    h, r = grams(hyp), grams(ref)
    overlap = sum(min(h.count(g), r.count(g)) for g in set(h))
    if not overlap:
        return 0.0
    p, q = overlap / len(h), overlap / len(r)
    return 2 * p * q / (p + q)


HYP, REF = "the cat sat on the mat", "the cat is on the mat"


@pytest.mark.parametrize(
    "metric, expected",
    [
        # rapidfuzz ratio: 2 * LCS characters / total characters = 2 * 20 / 43.
        ("fuzzy_match", 40 / 43),
        ("bleu", sacrebleu.sentence_bleu(HYP, [REF]).score / 100),
        # GLEU = min(precision, recall) over all 1..4-grams: 5 + 3 + 1 + 0 = 9 matched of 6 + 5 + 4 + 3 = 18.
        ("gleu", 9 / 18),
        # METEOR (exact and stem matches): P = R = 5/6, Fmean = 10PR/(R+9P) = 5/6; 2 chunks ("the cat",
        # "on the mat") over 5 matches -> penalty 0.5 * (2/5)^3.
        ("meteor", 5 / 6 * (1 - 0.5 * (2 / 5) ** 3)),
        ("rouge_1", _ngram_f(HYP, REF, 1)),
        ("rouge_2", _ngram_f(HYP, REF, 2)),
        ("rouge_3", _ngram_f(HYP, REF, 3)),
        ("rouge_4", 0.0),
        ("rouge_5", 0.0),
        # LCS "the cat on the mat" = 5 words of 6 each side.
        ("rouge_l", 5 / 6),
    ],
)
def test_text_similarity(metric, expected):
    grader = parse_grader(
        {
            "type": "text_similarity",
            "name": "sim",
            "input": "{{sample.output_text}}",
            "reference": "{{item.reference}}",
            "evaluation_metric": metric,
            "pass_threshold": 0.5,
        }
    )
    result = grade(grader, make_sample(HYP), {"reference": REF})
    assert result.reward == pytest.approx(expected, abs=1e-9)
    assert result.passed == (expected >= 0.5)
    same = grade(grader, make_sample(REF), {"reference": REF}).reward
    assert same == pytest.approx(1.0 if metric != "meteor" else 1 - 0.5 * (1 / 6) ** 3)


def test_rouge_matches_the_reference_library():
    scorer = rouge_scorer.RougeScorer(["rouge2"])
    grader = parse_grader(
        {
            "type": "text_similarity",
            "name": "sim",
            "input": "{{sample.output_text}}",
            "reference": "The Eagle is a cheap coffee shop near Burger King.",
            "evaluation_metric": "rouge_2",
        }
    )
    text = "The Eagle, a coffee shop near Burger King, is cheap."
    expected = scorer.score("The Eagle is a cheap coffee shop near Burger King.", text)["rouge2"].fmeasure
    assert grade(grader, make_sample(text), {}).reward == pytest.approx(expected)


def test_cosine_uses_the_encoder():
    from tunesmith.graders import Context

    vectors = {"a": [1.0, 0.0], "b": [1.0, 1.0]}
    context = Context()
    context.encode = lambda texts: [vectors[t] for t in texts]
    grader = parse_grader(
        {
            "type": "text_similarity",
            "name": "cos",
            "input": "{{sample.output_text}}",
            "reference": "b",
            "evaluation_metric": "cosine",
        }
    )
    assert grade(grader, make_sample("a"), {}, context).reward == pytest.approx(1 / math.sqrt(2))


def test_cosine_with_a_tunesmith_encoder(tiny_bert):
    from tunesmith.encoders.model import load_encoder
    from tunesmith.graders import Context

    grader = parse_grader(
        {
            "type": "text_similarity",
            "name": "cos",
            "input": "{{sample.output_text}}",
            "reference": "{{item.r}}",
            "evaluation_metric": "cosine",
        }
    )
    context = Context(encoder=str(tiny_bert))
    a, b = load_encoder(str(tiny_bert)).encode(["a cheap pub", "an expensive restaurant"])
    expected = float(a @ b / ((a @ a) ** 0.5 * (b @ b) ** 0.5))
    assert grade(grader, make_sample("a cheap pub"), {"r": "an expensive restaurant"}, context).reward == pytest.approx(
        max(expected, 0.0), abs=1e-5
    )
    assert grade(grader, make_sample("a cheap pub"), {"r": "a cheap pub"}, context).reward == pytest.approx(1.0)
