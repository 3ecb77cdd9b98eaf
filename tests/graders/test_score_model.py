"""score_model: the grader's messages, templates filled, go to a local model; the first number in
its answer is the score, clipped to ``range``."""

import pytest

from tunesmith.graders import Context, GraderError, grade, make_sample, parse_grader
from tunesmith.graders.judge import Judges


class Scripted(Judges):
    """A judge that answers ``answer`` and records what it was asked."""

    def __init__(self, answer: str):
        super().__init__()
        self.reply, self.asked = answer, []

    def answer(self, model, messages, params):
        self.asked.append((model, messages, params))
        return self.reply, 7


def score_model(**extra) -> dict:
    return {
        "type": "score_model",
        "name": "judge",
        "model": "smollm2-135m-instruct",
        "input": [
            {"role": "developer", "content": "Score the answer from 0 to 10."},
            {"role": "user", "content": [{"type": "input_text", "text": "Q: {{item.q}}\nA: {{sample.output_text}}"}]},
        ],
        **extra,
    }


@pytest.mark.parametrize(
    "answer, range, reward",
    [
        ("7", None, 1.0),  # clipped to the default range [0, 1]
        ("Score: 7.5 out of 10", [0, 10], 7.5),  # the FIRST number
        ('{"steps": [], "result": 0.25}', None, 0.25),
        ("-3", [0, 10], 0.0),
        ("1e1", [0, 5], 5.0),
        (".5 points", [0, 1], 0.5),
    ],
)
def test_score(answer, range, reward):
    judges = Scripted(answer)
    extra = {"range": range} if range else {}
    result = grade(
        parse_grader(score_model(pass_threshold=0.5, **extra)),
        make_sample("Paris"),
        {"q": "Capital?"},
        Context(judges=judges),
    )
    assert result.reward == reward and result.passed == (reward >= 0.5)
    assert result.token_usage == 7
    model, messages, _ = judges.asked[0]
    assert model == "smollm2-135m-instruct"
    assert messages == [
        {"role": "system", "content": "Score the answer from 0 to 10."},
        {"role": "user", "content": "Q: Capital?\nA: Paris"},
    ]


def test_answer_without_a_number():
    result = grade(parse_grader(score_model()), make_sample("x"), {"q": "?"}, Context(judges=Scripted("great")))
    assert result.reward == 0.0 and result.errors["model_grader_parse_error"]
    assert "has no number: 'great'" in result.messages[0]


def test_missing_field_is_not_sent_to_the_model():
    judges = Scripted("1")
    result = grade(parse_grader(score_model()), make_sample("x"), {}, Context(judges=judges))
    assert result.errors["invalid_variable_error"] and "{{item.q}}" in result.messages[0]
    assert judges.asked == []


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"range": [1, 1]}, "range: range must be [low, high] with low < high"),
        ({"sampling_params": {"reasoning_effort": "high"}}, "reasoning_effort is not supported"),
        ({"input": []}, "input: List should have at least 1 item"),
        (
            {"input": [{"role": "user", "content": {"type": "input_image", "image_url": "x"}}]},
            "content of type 'input_image' is not supported",
        ),
    ],
)
def test_refused(extra, message):
    with pytest.raises(GraderError) as error:
        parse_grader(score_model(**extra))
    assert message in str(error.value)


def test_a_local_model_grades(tiny_model_name, tmp_path):
    from tunesmith.models import resolve_model_path

    grader = parse_grader(
        score_model(model=tiny_model_name, range=[0, 10], sampling_params={"max_completions_tokens": 4})
    )
    context = Context()
    first = grade(grader, make_sample("Paris"), {"q": "Capital?"}, context)
    again = grade(grader, make_sample("Paris"), {"q": "Capital?"}, context)
    assert 0 <= first.reward <= 10 and first.token_usage > 4
    assert not any(v for k, v in first.errors.items() if k != "model_grader_parse_error")
    assert (again.reward, again.messages) == (first.reward, first.messages)  # greedy: the same answer
    # A run folder (its merged/ model) judges as the model it holds.
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "merged").symlink_to(resolve_model_path(tiny_model_name))
    run = parse_grader(
        score_model(model=str(tmp_path / "run"), range=[0, 10], sampling_params={"max_completions_tokens": 4})
    )
    from_run = grade(run, make_sample("Paris"), {"q": "Capital?"}, context)
    assert (from_run.reward, from_run.messages, from_run.token_usage) == (
        first.reward,
        first.messages,
        first.token_usage,
    )
