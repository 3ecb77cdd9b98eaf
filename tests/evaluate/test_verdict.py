import pytest

from tunesmith.evaluate.report import write_reports
from tunesmith.evaluate.verdict import verdict


def _variant(generated=2.0, speed=2.0, prompt=40.0):
    return {"metrics": {}, "cost": {"prompt_tokens": prompt, "generated_tokens": generated, "tokens_per_second": speed}}


def _result(gain, forgetting=None, training=None, tuned_speed=8.0, few_speed=2.0, metric="accuracy", few_prompt=200.0):
    # Seconds per request: 2 tokens at 8 tok/s = 0.25 s tuned, 2 at 2 tok/s = 1.0 s few-shot: 0.75 s saved
    # (the few-shot prompt is the longer one: its reading shows up as fewer tokens/s).
    return {
        "variants": {
            "zero_shot": _variant(),
            "few_shot": _variant(speed=few_speed, prompt=few_prompt),
            "finetuned": _variant(speed=tuned_speed),
        },
        "gain": {metric: {"baseline": "few_shot", **gain}},
        "forgetting": forgetting or {},
        "training": training,
    }


WIN = {"value": 12.5, "low": 4.0, "high": 21.0}
TIE = {"value": 3.0, "low": -2.0, "high": 8.0}
LOSS = {"value": -9.0, "low": -15.0, "high": -3.0}
PPL = {"value": 10.0, "low": 10.0, "high": 20.0}


@pytest.mark.parametrize(
    ("gain", "metric", "outcome", "phrase"),
    [
        (WIN, "accuracy", "better", "The fine-tune beats few-shot prompting on accuracy: +12.50 [+4.00, +21.00]"),
        (TIE, "accuracy", "tie", "so the cheaper option, few-shot prompting, suffices"),
        (LOSS, "accuracy", "worse", "worse than few-shot prompting on accuracy"),
        # Perplexity: lower is better, so an interval above 0 is a loss.
        (PPL, "perplexity", "worse", "worse than few-shot prompting on perplexity"),
        ({"value": -2.0, "low": -3.0, "high": -1.0}, "perplexity", "better", "beats few-shot prompting"),
    ],
)
def test_quality_outcome_from_the_paired_interval(gain, metric, outcome, phrase):
    said = verdict(_result(gain, metric=metric))
    assert (said["outcome"], said["metric"], said["baseline"]) == (outcome, metric, "few_shot")
    assert phrase in said["sentences"][0]


@pytest.mark.parametrize(
    ("forgetting", "rise", "phrase"),
    [
        ({"base": {"value": 10.0}, "finetuned": {"value": 12.0}}, 0.2, "rose by 20.0% (10.00 for the base, 12.00"),
        ({"base": {"value": 10.0}, "finetuned": {"value": 9.5}}, -0.05, "fell by 5.0%"),
        ({"base": {"value": 10.0}}, None, "not measured"),
        ({}, None, "not measured"),
    ],
)
def test_forgetting_is_the_relative_perplexity_rise(forgetting, rise, phrase):
    said = verdict(_result(WIN, forgetting=forgetting))
    if rise is None:
        assert said["forgetting"] is None
    else:
        assert said["forgetting"]["relative_rise"] == pytest.approx(rise)
    assert phrase in said["sentences"][1]


@pytest.mark.parametrize(
    ("training", "tuned_speed", "few_speed", "requests", "phrase"),
    [
        # 300 s of training / 0.75 s saved per request = 400 requests.
        ({"wall_seconds": 300.0}, 8.0, 2.0, 400, "after 400 requests"),
        ({"wall_seconds": 301.0}, 8.0, 2.0, 402, "after 402 requests"),  # rounded up: 401.33
        ({"wall_seconds": 300.0}, 2.0, 8.0, None, "never"),  # the fine-tune is the slower one
        (None, 8.0, 2.0, None, "unknown"),  # no summary.json
        ({"wall_seconds": 300.0}, None, 2.0, None, "unknown"),  # no timing (e.g. perplexity only)
    ],
)
def test_break_even_requests(training, tuned_speed, few_speed, requests, phrase):
    said = verdict(_result(WIN, training=training, tuned_speed=tuned_speed, few_speed=few_speed))
    assert (said["break_even"] or {}).get("requests") == requests
    assert phrase in said["sentences"][2]


def test_no_break_even_when_the_finetune_reads_and_writes_as_many_tokens():
    # Same prompt, same answer length: a faster measured tokens/s is the machine's load, not a saving.
    said = verdict(_result(WIN, training={"wall_seconds": 300.0}, few_prompt=40.0))
    assert (said["break_even"]["requests"], said["break_even"]["seconds_saved_per_request"]) == (None, 0.0)
    assert "no fewer tokens than few-shot prompting, so it saves no time" in said["sentences"][2]


def test_no_finetune_no_verdict(tmp_path):
    result = _result(WIN)
    del result["variants"]["finetuned"]
    result["gain"] = {}
    assert verdict(result) == {"outcome": None, "sentences": ["No verdict: no fine-tuned model was evaluated."]}


def test_verdict_section_in_both_reports(tmp_path):
    metric = {"value": 70.0, "low": 60.0, "high": 80.0}
    result = _result(TIE, training={"wall_seconds": 300.0, "trained_tokens": 10, "steps": 1})
    for variant in result["variants"].values():
        variant["metrics"] = {"accuracy": metric}
    result.update(
        task="classification",
        model="m",
        test_file="t.jsonl",
        items=5,
        references=5,
        finetuned="run",
        confidence={"level": 0.95, "resamples": 10, "seed": 0},
        few_shot=None,
        loss_curve=None,
        notes=[],
        verdict=verdict(result),
    )
    write_reports(result, tmp_path)
    markdown = (tmp_path / "report.md").read_text()
    assert markdown.index("## Verdict") < markdown.index("## Quality")
    assert "few-shot prompting, suffices" in markdown and "after 400 requests" in markdown
    assert "few-shot prompting, suffices" in (tmp_path / "report.html").read_text()
