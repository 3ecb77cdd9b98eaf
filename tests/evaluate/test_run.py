import json
import shutil
from html.parser import HTMLParser

import pytest

from tunesmith.config import config_from_dict
from tunesmith.errors import TunesmithError
from tunesmith.evaluate.run import format_summary, load_test_items, run_evaluation
from tunesmith.models import resolve_model_path

TRAIN = [
    ("Is the sky blue?", "yes"),
    ("Is fire cold?", "no"),
    ("Is water wet?", "yes"),
    ("Do fish fly?", "no"),
]
TEST = [("Is snow white?", "yes"), ("Is the sun dark?", "no"), ("Is grass green?", "yes")]


def _write_jsonl(path, pairs):
    path.write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in pairs))
    return str(path)


def _config(tmp_path, **eval_settings):
    raw = {
        "model": "tiny-llama-test",
        "out_dir": str(tmp_path / "no-run"),
        "data": {
            "train": _write_jsonl(tmp_path / "train.jsonl", TRAIN),
            "test": _write_jsonl(tmp_path / "test.jsonl", TEST),
        },
        "eval": {
            "task": "classification",
            "labels": ["yes", "no"],
            "max_new_tokens": 4,
            "batch_size": 4,
            "bootstrap_resamples": 50,
            **eval_settings,
        },
    }
    return config_from_dict(raw)


@pytest.fixture
def run_folder(tmp_path, tiny):
    """A fake finished run: the tiny model as merged/, plus the trainer's summary and metrics."""
    run = tmp_path / "run"
    shutil.copytree(resolve_model_path("tiny-llama-test"), run / "merged")
    (run / "summary.json").write_text(json.dumps({"trained_tokens": 1234, "wall_seconds": 5.5, "steps": 20}))
    lines = [{"step": s, "train_loss": 3.0 - 0.1 * s} for s in range(1, 21)]
    lines += [{"step": 10, "val_loss": 2.5}, {"step": 20, "val_loss": 1.5}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return run


class _Sections(HTMLParser):
    """Collects section ids, the table rows of each section, and image sources."""

    def __init__(self):
        super().__init__()
        self.rows, self.images, self.section = {}, [], None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.section = attrs["id"]
            self.rows[self.section] = 0
        elif tag == "tr" and self.section:
            self.rows[self.section] += 1
        elif tag == "img":
            self.images.append(attrs["src"])


def test_classification_run_end_to_end(tmp_path, run_folder):
    config = _config(tmp_path, general_text=_write_jsonl(tmp_path / "general.txt", [("some text", "x")] * 20))
    result = run_evaluation(config, str(run_folder), str(tmp_path / "out"))

    assert list(result["variants"]) == ["zero_shot", "few_shot", "finetuned"]
    for variant in result["variants"].values():
        assert set(variant["metrics"]) == {"accuracy", "macro_f1", "parse_rate"}
        for m in variant["metrics"].values():
            assert m["low"] <= m["value"] <= m["high"]
            assert 0 <= m["value"] <= 100
    # The same weights zero-shot, loaded twice: identical answers and prompt cost.
    assert result["variants"]["finetuned"]["metrics"] == result["variants"]["zero_shot"]["metrics"]
    cost = {name: v["cost"]["prompt_tokens"] for name, v in result["variants"].items()}
    assert cost["few_shot"] > cost["zero_shot"] == cost["finetuned"]
    assert result["few_shot"]["mean_shots"] == 4  # the whole 4-example pool fits
    assert result["training"] == {"trained_tokens": 1234, "wall_seconds": 5.5, "steps": 20}
    assert len(result["loss_curve"]["train"]) == 20 and result["loss_curve"]["val"] == [[10, 2.5], [20, 1.5]]
    assert result["forgetting"]["base"] == result["forgetting"]["finetuned"]
    assert result["forgetting"]["base"]["value"] > 1
    # Same weights as the base: no gain over zero-shot; over a better few-shot, a loss.
    for name, gain in result["gain"].items():
        base = result["variants"][gain["baseline"]]["metrics"][name]["value"]
        assert gain["value"] == pytest.approx(result["variants"]["finetuned"]["metrics"][name]["value"] - base)
        assert gain["value"] <= 1e-9 and gain["low"] <= gain["value"] <= gain["high"]

    out = tmp_path / "out"
    assert json.loads((out / "eval.json").read_text()) == result
    page = _Sections()
    page.feed((out / "report.html").read_text())
    # One header row + one row per variant / per side-by-side item.
    assert page.rows == {
        "verdict": 0,
        "quality": 4,
        "loss": 0,
        "gain": 4,
        "cost": 4,
        "forgetting": 3,
        "samples": 1 + len(TEST),
    }
    assert len(page.images) == 1 and page.images[0].startswith("data:image/png;base64,iVBOR")
    markdown = (out / "report.md").read_text()
    # The verdict from these numbers: the same weights forget nothing and save no time per request.
    assert result["verdict"]["metric"] == "accuracy" and result["verdict"]["forgetting"]["relative_rise"] == 0
    for heading in (
        "## Verdict",
        "## Quality",
        "## Loss curves",
        "## Cost",
        "## Forgetting monitor",
        "## Test items side by side",
    ):
        assert heading in markdown
    summary = format_summary(result)
    assert summary.splitlines()[0].split()[:4] == ["variant", "accuracy", "macro_f1", "parse_rate"]
    assert "1234 tokens, 20 steps" in summary
    assert summary.splitlines()[-1] == result["verdict"]["sentences"][-1]  # the verdict closes the summary


def test_preferred_label_wins_constrained_scoring(tmp_path, tiny, prefer_tokens):
    # The tiny model is random; a logit bonus on the tokens of one label makes its preference known.
    prefer_tokens(tiny.tokenizer("no", add_special_tokens=False).input_ids, bonus=8.0)
    from tunesmith.evaluate.run import _prompt_ids, _score_classification

    config = _config(tmp_path)
    items = load_test_items(config)
    prompts = [_prompt_ids(tiny.tokenizer, item, None) for item in items]
    scored = _score_classification(tiny.model, tiny.tokenizer, prompts, items, config.eval)
    assert [o.split()[0] for o in scored["outputs"]] == ["no", "no", "no"]
    assert scored["metrics"]["accuracy"].score() == pytest.approx(100 / 3)


@pytest.mark.parametrize(
    ("task", "labels", "names"),
    [
        ("classification", ["yes", "no"], {"accuracy", "macro_f1", "parse_rate"}),
        ("generation", None, {"bleu", "rouge_l", "chrf", "exact_match"}),
        ("text", None, {"perplexity"}),
    ],
)
def test_base_only_run_without_a_finetuned_model(tmp_path, task, labels, names):
    config = _config(tmp_path, few_shot_k=1, task=task, labels=labels)
    result = run_evaluation(config, None, str(tmp_path / "out"))
    assert list(result["variants"]) == ["zero_shot", "few_shot"]
    assert set(result["variants"]["zero_shot"]["metrics"]) == names
    assert result["few_shot"]["mean_shots"] == 1
    assert any("base variants only" in n for n in result["notes"])
    assert all(s["finetuned"] is None for s in result["samples"])


def test_few_shot_k_zero_leaves_the_few_shot_variant_out(tmp_path, run_folder):
    # Comparing two fine-tunes (the base here a run folder): few-shot prompts would only cost time.
    result = run_evaluation(_config(tmp_path, few_shot_k=0), str(run_folder), str(tmp_path / "out"))
    assert list(result["variants"]) == ["zero_shot", "finetuned"]
    assert "few-shot skipped: eval.few_shot_k is 0" in result["notes"]
    assert set(result["gain"]["accuracy"]) >= {"value", "low", "high"}


def test_generation_items_group_identical_prompts_into_references(tmp_path):
    config = _config(tmp_path, task="generation", labels=None)
    pairs = [
        ("name[Aromi]", "Aromi is a pub."),
        ("name[Zizzi]", "Zizzi."),
        ("name[Aromi]", "There is Aromi."),
    ]
    config.data.test = _write_jsonl(tmp_path / "e2e.jsonl", pairs)
    items = load_test_items(config)
    assert [item.references for item in items] == [("Aromi is a pub.", "There is Aromi."), ("Zizzi.",)]


def _mismatched_model(tmp_path):
    from transformers import LlamaConfig

    folder = tmp_path / "other"
    LlamaConfig(vocab_size=49152, hidden_size=32, num_hidden_layers=1, num_attention_heads=2).save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c, tmp: setattr(c.data, "test", None), "data.test is not set"),
        (lambda c, tmp: setattr(c.data, "test", str(tmp / "missing.jsonl")), "data file not found"),
        (
            lambda c, tmp: setattr(c.eval, "labels", ["positive", "negative"]),
            "answer 'yes' is not one of eval.labels",
        ),
        (lambda c, tmp: setattr(c.eval, "labels", None), "needs eval.labels"),
        (lambda c, tmp: setattr(c.data, "test", str(tmp / "raw.txt")), "raw text has no answers"),
        (lambda c, tmp: "missing-run", "fine-tuned model not found"),
        (
            lambda c, tmp: _mismatched_model(tmp),
            "does not match base model 'tiny-llama-test': hidden_size is 32",
        ),
    ],
)
def test_missing_or_mismatched_inputs_fail_clearly(tmp_path, change, message):
    (tmp_path / "raw.txt").write_text("Just some text.\n\nAnother paragraph.\n")
    config = _config(tmp_path)
    finetuned = change(config, tmp_path)
    with pytest.raises(TunesmithError, match=message):
        run_evaluation(config, finetuned if isinstance(finetuned, str) else None, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
