import math
from html.parser import HTMLParser

import pytest

from tunesmith.evaluate.report import write_reports


class _Cells(HTMLParser):
    def __init__(self):
        super().__init__()
        self.section, self.cells, self.text = None, {}, []

    def handle_starttag(self, tag, attrs):
        if tag == "section":
            self.section = dict(attrs)["id"]
            self.cells[self.section] = []
        elif tag == "td":
            self.text = []

    def handle_data(self, data):
        self.text.append(data)

    def handle_endtag(self, tag):
        if tag == "td":
            self.cells[self.section].append("".join(self.text))


def _result(samples, loss_curve):
    metric = {"value": 71.25, "low": 60.0, "high": 80.5}
    variant = {
        "metrics": {"accuracy": metric, "macro_f1": {"value": math.nan, "low": math.nan, "high": math.nan}},
        "cost": {"prompt_tokens": 42.0, "generated_tokens": 3.0, "tokens_per_second": 900.0},
    }
    return {
        "task": "classification",
        "model": "m",
        "test_file": "t.jsonl",
        "items": samples,
        "references": samples,
        "finetuned": None,
        "confidence": {"level": 0.95, "resamples": 1000, "seed": 0},
        "variants": {"zero_shot": variant, "few_shot": variant},
        "few_shot": None,
        "forgetting": {},
        "training": None,
        "loss_curve": loss_curve,
        "notes": ["no fine-tuned model"],
        "gain": {"accuracy": {"baseline": "few_shot", "value": 12.5, "low": 4.0, "high": 21.0}},
        "samples": [
            {
                "input": f"q<{i}>",
                "references": ["a", "b"],
                "zero_shot": "x",
                "few_shot": "y",
                "finetuned": None,
            }
            for i in range(samples)
        ],
    }


@pytest.mark.parametrize(
    ("loss_curve", "has_plot"),
    [
        (None, False),
        ({"train": [[1, 2.0], [2, 1.5]], "val": [[2, 1.7]]}, True),
        ({"train": [], "val": []}, False),
    ],
)
def test_report_sections_tables_and_plot(tmp_path, loss_curve, has_plot):
    write_reports(_result(10, loss_curve), tmp_path)
    page = _Cells()
    page.feed((tmp_path / "report.html").read_text())
    assert list(page.cells) == ["verdict", "quality", "loss", "gain", "cost", "forgetting", "samples"]
    assert page.cells["gain"] == ["accuracy", "base, few-shot", "12.50 [4.00, 21.00]", "yes"]
    assert page.cells["quality"] == [
        *("base, zero-shot", "71.2 [60.0, 80.5]", "- [-, -]"),
        *("base, few-shot", "71.2 [60.0, 80.5]", "- [-, -]"),
    ]
    assert page.cells["cost"] == ["base, zero-shot", "42", "3.0", "900", "base, few-shot", "42", "3.0", "900"]
    assert len(page.cells["samples"]) == 10 * 5
    assert page.cells["samples"][:5] == ["q<0>", "a\nb", "x", "y", "-"]  # escaped, then parsed back
    html = (tmp_path / "report.html").read_text()
    assert ("data:image/png;base64," in html) == has_plot
    assert (tmp_path / "loss_curve.png").exists() == has_plot
    assert "http" not in html  # nothing to fetch: opens offline
    markdown = (tmp_path / "report.md").read_text()
    assert "| base, zero-shot | 71.2 [60.0, 80.5] | - [-, -] |" in markdown
    assert ("![train and validation loss](loss_curve.png)" in markdown) == has_plot


def test_a_graders_mean_score_keeps_three_decimals(tmp_path):
    # Slot coverage 0.770 vs 0.907 must not both read as 0.8 and 0.9; the pass rate stays in percent.
    result = _result(2, None)
    score = {"value": 0.7699, "low": 0.7588, "high": 0.7799}
    passed = {"value": 61.25, "low": 50.0, "high": 70.0}
    for variant in ("zero_shot", "few_shot"):
        result["variants"][variant] = {
            **result["variants"][variant],
            "metrics": {"mean_score": score, "pass_rate": passed},
        }
    result["task"] = "graded"
    write_reports(result, tmp_path)
    page = _Cells()
    page.feed((tmp_path / "report.html").read_text())
    assert page.cells["quality"][:3] == ["base, zero-shot", "0.770 [0.759, 0.780]", "61.2 [50.0, 70.0]"]


@pytest.mark.parametrize(
    ("task", "metrics", "references", "note"),
    [
        ("classification", ("accuracy",), 10, "10 test items (10 references). Brackets"),
        ("graded", ("mean_score", "pass_rate"), 0, "10 test items. Brackets"),
        ("graded", ("mean_score",), 0, "10 test items. Brackets"),
        ("text", ("perplexity",), 10, "10 test items (10 references). Brackets"),
    ],
)
def test_the_quality_note_speaks_only_of_what_the_table_has(tmp_path, task, metrics, references, note):
    # Graded prompts have no references; a mean score or a perplexity is not a share in percent.
    result = _result(10, None)
    score = {"value": 0.5, "low": 0.4, "high": 0.6}
    for variant in ("zero_shot", "few_shot"):
        result["variants"][variant]["metrics"] = {name: score for name in metrics}
    result["task"], result["references"] = task, references
    write_reports(result, tmp_path)
    markdown = (tmp_path / "report.md").read_text()
    assert note in markdown
    assert ("Shares are in percent." in markdown) == any(m in ("accuracy", "pass_rate") for m in metrics)
