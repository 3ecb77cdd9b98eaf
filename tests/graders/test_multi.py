"""multi graders: calculate_output is arithmetic over the sub-graders' rewards, parsed safely."""

import pytest

from tunesmith.graders import GraderError, grade, make_sample, parse_grader

SUB = {
    "exact": {
        "type": "string_check",
        "name": "exact",
        "operation": "eq",
        "input": "{{sample.output_text}}",
        "reference": "{{item.answer}}",
    },
    "near": {
        "type": "string_check",
        "name": "near",
        "operation": "ilike",
        "input": "{{sample.output_text}}",
        "reference": "{{item.answer}}",
    },
}


def multi(formula: str, graders=SUB, **extra) -> dict:
    return {"type": "multi", "name": "combined", "graders": graders, "calculate_output": formula, **extra}


# The sample "PARIS!" against "Paris": exact = 0, near = 1.
@pytest.mark.parametrize(
    "formula, reward",
    [
        ("0.7 * exact + 0.3 * near", 0.3),
        ("(exact + near) / 2", 0.5),
        ("near ^ 2 + 1", 2.0),  # ^ is a power, as in OpenAI's guide
        ("near ** 3", 1.0),
        ("-near + 2", 1.0),
        ("max(exact, near) - min(exact, near)", 1.0),
        ("abs(exact - 3)", 3.0),
        ("sqrt(4 * near) + exp(exact) + log(near) + floor(2.7) + ceil(0.2)", 2 + 1 + 0 + 2 + 1),
        ("1e-1 * 10", 1.0),
    ],
)
def test_formula(formula, reward):
    result = grade(parse_grader(multi(formula, pass_threshold=1.0)), make_sample("PARIS!"), {"answer": "Paris"})
    assert result.reward == pytest.approx(reward)
    assert result.sub_rewards == {"exact": 0.0, "near": 1.0}
    assert result.passed == (reward >= 1.0)
    assert not any(result.errors.values())


@pytest.mark.parametrize(
    "formula, message",
    [
        ("near / exact", "division by zero"),
        ("near % exact", "division by zero"),
        ("log(exact)", "math domain error"),
        ("sqrt(exact - 1)", "math domain error"),
        ("10 ^ 10 ^ 10", "Numerical result out of range"),  # floats: an overflow, not a 10-billion-digit int
    ],
)
def test_no_value_scores_zero_with_an_error(formula, message):
    result = grade(parse_grader(multi(formula)), make_sample("PARIS!"), {"answer": "Paris"})
    assert result.reward == 0.0 and result.errors["other_error"]
    assert message in result.messages[-1]


@pytest.mark.parametrize(
    "formula, message",
    [
        ("__import__('os').system('true')", "only these functions may be called"),
        ("exact.__class__", "not arithmetic: 'exact.__class__'"),
        ("near.real", "not arithmetic"),
        ("open('x')", "only these functions may be called"),
        ("eval('1')", "only these functions may be called"),
        ("(lambda: 1)()", "only these functions may be called"),
        ("exact if near else 1", "not arithmetic"),
        ("exact < near", "not arithmetic"),
        ("[exact][0]", "not arithmetic"),
        ("'1' * 3", "not arithmetic"),
        ("True + 1", "not arithmetic"),
        ("max(*[1, 2])", "a function takes plain arguments"),
        ("round(near, ndigits=1)", "a function takes plain arguments"),
        ("fuzzy + 1", "unknown name (the graders are exact, near)"),
        ("exact +", "does not parse"),
        ("1 +" * 2000 + "1", "more than 2000"),
    ],
)
def test_refused_formulas(formula, message):
    with pytest.raises(GraderError) as error:
        parse_grader(multi(formula))
    assert error.value.param == "calculate_output"
    assert message in str(error.value)


def test_sub_grader_errors_reach_the_multi_grader():
    graders = {**SUB, "code": {"type": "python", "name": "code", "source": "def grade(s, i):\n    return 1 / 0"}}
    result = grade(parse_grader(multi("exact + near + code", graders)), make_sample("Paris"), {"answer": "Paris"})
    assert result.reward == 2.0 and result.sub_rewards["code"] == 0.0
    assert result.errors["python_grader_runtime_error"]
    assert "code: ZeroDivisionError: division by zero" in result.messages


def test_bad_sub_grader_is_named():
    graders = {"exact": {**SUB["exact"], "operation": "similar"}}
    with pytest.raises(GraderError) as error:
        parse_grader(multi("exact", graders))
    assert str(error.value).startswith("graders.exact.operation: Input should be")
