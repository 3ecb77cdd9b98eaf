import json
import shutil

import pytest

from tunesmith.config import config_from_dict
from tunesmith.errors import TunesmithError
from tunesmith.evaluate.run import run_evaluation
from tunesmith.models import resolve_model_path

PROMPTS = [{"messages": [{"role": "user", "content": f"Name colour {i}."}], "colour": c} for i, c in enumerate("abc")]


def _config(tmp_path, grader, rows=PROMPTS):
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return config_from_dict(
        {
            "model": "tiny-llama-test",
            "out_dir": str(tmp_path / "no-run"),
            "data": {"train": str(tmp_path / "test.jsonl"), "test": str(tmp_path / "test.jsonl")},
            "eval": {"task": "graded", "max_new_tokens": 3, "bootstrap_resamples": 50},
            "train": {"dtype": "float32"},
            "rl": {"grader": grader},
        }
    )


def _check(operation: str, threshold: float | None = 0.5) -> dict:
    grader = {"type": "string_check", "name": "c", "input": "{{sample.output_text}}"}
    grader |= {"reference": "{{item.colour}}-never-said", "operation": operation}
    return grader | ({"pass_threshold": threshold} if threshold is not None else {})


@pytest.fixture
def tuned_run(tmp_path, tiny_model_name):
    run = tmp_path / "run"
    shutil.copytree(resolve_model_path(tiny_model_name), run / "merged")
    return run


@pytest.mark.parametrize(
    ("grader", "score", "pass_rate"),
    [
        (_check("ne"), 1.0, 100.0),  # no answer says the reference: every answer scores 1
        (_check("eq"), 0.0, 0.0),
        (_check("ne", None), 1.0, None),  # no pass_threshold: no pass rate
    ],
)
def test_graded_eval_scores_base_and_finetuned_with_the_grader(tmp_path, tuned_run, grader, score, pass_rate):
    result = run_evaluation(_config(tmp_path, grader), str(tuned_run), str(tmp_path / "out"))
    assert set(result["variants"]) == {"zero_shot", "finetuned"}
    for variant in result["variants"].values():
        assert variant["metrics"]["mean_score"] == {"value": score, "low": score, "high": score}
        assert variant["metrics"].get("pass_rate", {}).get("value") == pass_rate
    # the same weights under both names: a paired gain of exactly 0
    assert result["gain"]["mean_score"]["value"] == 0.0
    assert result["gain"]["mean_score"]["baseline"] == "zero_shot"
    assert any("few-shot skipped" in note for note in result["notes"])
    written = json.loads((tmp_path / "out/eval.json").read_text())
    assert written["task"] == "graded" and written["items"] == 3


def test_graded_eval_names_the_line_lacking_a_grader_field(tmp_path):
    rows = [*PROMPTS, {"messages": [{"role": "user", "content": "Hi"}]}]
    with pytest.raises(TunesmithError, match=r"test.jsonl:4: colour: the grader reads this field"):
        run_evaluation(_config(tmp_path, _check("eq"), rows), None, str(tmp_path / "out"))


def test_graded_eval_needs_a_grader(tmp_path):
    with pytest.raises(TunesmithError, match="eval.task=graded needs rl.grader"):
        _config(tmp_path, None)


def test_graded_eval_reports_each_part_of_a_multi_grader(tmp_path, tuned_run):
    """A multi grader's reward and each named part, with intervals and paired gains: a reward that
    rose because one part rose and another fell shows as such."""
    parts = {"never": _check("ne", None), "always": _check("eq", None)}  # 1 and 0 for every answer
    grader = {"type": "multi", "name": "m", "graders": parts, "calculate_output": "0.75 * never - 0.5 * always"}
    result = run_evaluation(_config(tmp_path, grader), str(tuned_run), str(tmp_path / "out"))
    for variant in result["variants"].values():
        assert list(variant["metrics"]) == ["mean_score", "mean_score.never", "mean_score.always"]
        assert variant["metrics"]["mean_score"]["value"] == 0.75
        assert variant["metrics"]["mean_score.never"] == {"value": 1.0, "low": 1.0, "high": 1.0}
        assert variant["metrics"]["mean_score.always"]["value"] == 0.0
    assert set(result["gain"]) == {"mean_score", "mean_score.never", "mean_score.always"}
    report = (tmp_path / "out/report.md").read_text()
    assert "mean_score.never" in report and "0.750" in report
