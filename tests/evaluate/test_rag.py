"""eval.rag: the top-k passages in the prompt, two more variants in the report, their cost, the verdict."""

import json
import re
import shutil

import numpy as np
import pytest

from tunesmith.config import config_from_dict
from tunesmith.encoders.bm25 import BM25
from tunesmith.encoders.data import read_passages
from tunesmith.encoders.model import load_encoder
from tunesmith.errors import TunesmithError
from tunesmith.evaluate import run
from tunesmith.evaluate.verdict import verdict
from tunesmith.models import resolve_model_path

CORPUS = {
    "v1": "Varnholt lies on the river Esk; Varnholt dates from 1632.",
    "v2": "A road leads from Quessary to Varnholt.",
    "b1": "Brannock Freight was founded by Orla Vennick.",
    "b2": "Brannock barges carry freight downstream.",
    "q1": "Quessary is home to 4,100 people who live by the sea.",
    "x": "Cheese is made from milk.",
}
QUESTIONS = [
    ("Which river flows through Varnholt?", "Esk"),
    ("Who founded Brannock Freight?", "Orla Vennick"),
    ("How many people live in Quessary?", "4,100"),
]
# By hand: BM25 ranks first the passage sharing most rare words with the question, then the next.
BM25_TOP2 = [["v1", "v2"], ["b1", "b2"], ["q1", "v2"]]


def _write(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in CORPUS.items()))
    qa = "".join(json.dumps({"prompt": q, "completion": a}) + "\n" for q, a in QUESTIONS)
    (tmp_path / "test.jsonl").write_text(qa)
    (tmp_path / "train.jsonl").write_text(qa)
    return str(corpus)


def _config(tmp_path, **rag):
    return config_from_dict(
        {
            "model": "tiny-llama-test",
            "out_dir": str(tmp_path / "no-run"),
            "data": {"train": str(tmp_path / "train.jsonl"), "test": str(tmp_path / "test.jsonl")},
            "train": {"dtype": "float32"},
            "eval": {
                "task": "qa",
                "few_shot_k": 1,
                "max_new_tokens": 2,
                "batch_size": 4,
                "bootstrap_resamples": 20,
                "rag": {"corpus": _write(tmp_path), "k": 2, **rag},
            },
        }
    )


@pytest.fixture
def prompts_seen(monkeypatch, tiny):
    """The decoded prompts of every variant run_evaluation scores, in the order it scores them."""
    seen = []
    real = run.evaluate_variant

    def recording(model, tokenizer, prompts, *args):
        seen.append([tokenizer.decode(p) for p in prompts])
        return real(model, tokenizer, prompts, *args)

    monkeypatch.setattr(run, "evaluate_variant", recording)
    return seen


def _passages_in(prompt: str) -> list[str]:
    """The ids of the passages a prompt holds, in the order it shows them, checked to be numbered 1, 2, ..."""
    by_text = {text: ident for ident, text in CORPUS.items()}
    shown = re.findall(r"^\[(\d+)\] (.*)$", prompt, flags=re.MULTILINE)
    assert [int(n) for n, _ in shown] == list(range(1, len(shown) + 1))
    return [by_text[text] for _, text in shown]


def _rag_prompts(seen: list[list[str]]) -> list[list[str]]:
    return [batch for batch in seen if "Context:" in batch[0]]


def _dense_order(tiny_bert) -> np.ndarray:
    """Every passage per question, best first, from the encoder's own embeddings (cosine, ties in corpus order)."""
    encoder = load_encoder(tiny_bert)
    scores = encoder.encode([q for q, _ in QUESTIONS]) @ encoder.encode(list(CORPUS.values())).T
    return np.argsort(-scores, axis=1, kind="stable")


def _bm25_order() -> np.ndarray:
    index = BM25(list(CORPUS.values()))
    return np.stack([np.argsort(-index.scores(q), kind="stable") for q, _ in QUESTIONS])


def _fused(*orders: np.ndarray, k: int = 2) -> list[list[str]]:
    """Reciprocal rank fusion by hand: a passage scores the sum of 1 / (60 + its rank) over the rankings."""
    ids = list(CORPUS)
    out = []
    for rows in zip(*orders, strict=True):
        score = {i: sum(1 / (60 + list(row).index(i) + 1) for row in rows) for i in range(len(ids))}
        out.append([ids[i] for i in sorted(score, key=lambda i: (-score[i], i))[:k]])
    return out


@pytest.mark.parametrize("retriever", ["bm25", "dense", "hybrid"])
def test_the_prompt_holds_exactly_the_top_k_passages_in_rank_order(tmp_path, prompts_seen, tiny_bert, retriever):
    ids = list(CORPUS)
    if retriever == "bm25":
        settings, expected = {}, BM25_TOP2
        assert [[ids[i] for i in row[:2]] for row in _bm25_order()] == expected  # the hand ranking is BM25's
    elif retriever == "dense":
        settings, expected = {"retriever": tiny_bert}, [[ids[i] for i in row[:2]] for row in _dense_order(tiny_bert)]
    else:
        settings, expected = (
            {"retriever": "hybrid", "encoder": tiny_bert},
            _fused(_bm25_order(), _dense_order(tiny_bert)),
        )
    result = run.run_evaluation(_config(tmp_path, **settings), None, str(tmp_path / "out"))

    assert result["rag"]["retrieved"] == expected
    (rag_prompts,) = _rag_prompts(prompts_seen)  # the base model's; no fine-tune here
    assert [_passages_in(p) for p in rag_prompts] == expected
    for prompt, (question, _) in zip(rag_prompts, QUESTIONS, strict=True):
        # The passages come first in the question's own user turn, then a blank line and the question.
        assert re.search(rf"Context:\n\[1\] [^\n]+\n\[2\] [^\n]+\n\n{re.escape(question)}<\|im_end\|>", prompt)
    assert [s["retrieved"] for s in result["samples"]] == expected


@pytest.fixture
def run_folder(tmp_path, tiny):
    """A fake finished run: the tiny model as merged/, with the trainer's summary."""
    folder = tmp_path / "run"
    shutil.copytree(resolve_model_path("tiny-llama-test"), folder / "merged")
    (folder / "summary.json").write_text(json.dumps({"trained_tokens": 100, "wall_seconds": 2.0, "steps": 5}))
    return folder


def test_retrieved_variants_are_reported_with_intervals_gains_and_their_prompt_cost(
    tmp_path, prompts_seen, run_folder, tiny
):
    result = run.run_evaluation(_config(tmp_path), str(run_folder), str(tmp_path / "out"))

    assert list(result["variants"]) == ["zero_shot", "few_shot", "base_rag", "finetuned", "finetuned_rag"]
    for variant in result["variants"].values():
        assert set(variant["metrics"]) == {"contains", "exact_match"}
        assert all(m["low"] <= m["value"] <= m["high"] for m in variant["metrics"].values())
    # The fine-tune's gain is over the best alternative without training, retrieval included.
    assert result["gain"]["contains"]["baseline"] in ("zero_shot", "few_shot", "base_rag")
    assert set(result["rag_gain"]) == {"base_rag", "finetuned", "finetuned_rag"}
    assert result["rag_gain"]["finetuned"]["contains"]["baseline"] == "base_rag"
    for by_metric in result["rag_gain"].values():
        assert all(g["low"] <= g["value"] <= g["high"] for g in by_metric.values())

    # Both models see the same retrieved passages, and each prompt's tokens are its cost.
    base_rag, tuned_rag = _rag_prompts(prompts_seen)
    assert base_rag == tuned_rag and [_passages_in(p) for p in base_rag] == BM25_TOP2
    cost = {name: v["cost"]["prompt_tokens"] for name, v in result["variants"].items()}
    asked = [len(tiny.tokenizer(p, add_special_tokens=False).input_ids) for p in base_rag]
    assert cost["base_rag"] == cost["finetuned_rag"] == pytest.approx(sum(asked) / len(asked))
    passage_tokens = [
        sum(len(tiny.tokenizer(CORPUS[i], add_special_tokens=False).input_ids) for i in top) for top in BM25_TOP2
    ]
    assert cost["base_rag"] - cost["zero_shot"] >= sum(passage_tokens) / len(passage_tokens)

    report = (tmp_path / "out" / "report.md").read_text()
    quality = report.split("## Quality")[1].split("\n## ")[0]
    for title in ("base + retrieved", "fine-tuned + retrieved"):
        # Both metrics as value [low, high].
        assert re.search(rf"^\| {re.escape(title)}( \| \d+\.\d \[\d+\.\d, \d+\.\d\]){{2}} \|$", quality, re.M)
    assert "## Does retrieval help?" in report
    assert f"| base + retrieved | {cost['base_rag']:,.0f} |" in report  # the cost table's prompt tokens
    added = cost["base_rag"] - cost["zero_shot"]
    assert f"the 2 passages add {added:,.1f} prompt tokens per request" in report
    summary = run.format_summary(result)
    assert "base_rag vs " in summary and "finetuned_rag vs " in summary


def _variant(speed=2.0):
    return {"metrics": {}, "cost": {"prompt_tokens": 40.0, "generated_tokens": 2.0, "tokens_per_second": speed}}


def _hand_made(gain: dict, against_retrieval: dict, baseline: str = "few_shot") -> dict:
    names = ("zero_shot", "few_shot", "base_rag", "finetuned", "finetuned_rag")
    return {
        "variants": {name: _variant() for name in names},
        "gain": {"contains": {"baseline": baseline, **gain}},
        "rag_gain": {
            "base_rag": {"contains": {"baseline": "zero_shot", "value": 20.0, "low": 10.0, "high": 30.0}},
            "finetuned": {"contains": {"baseline": "base_rag", **against_retrieval}},
            "finetuned_rag": {"contains": {"baseline": "finetuned", "value": 5.0, "low": -1.0, "high": 11.0}},
        },
        "forgetting": {},
        "training": {"wall_seconds": 100.0},
    }


WIN = {"value": 12.0, "low": 4.0, "high": 20.0}
TIE = {"value": 3.0, "low": -2.0, "high": 8.0}
SUFFICES = "so the cheaper option, retrieval (the base model with retrieved passages), suffices"


@pytest.mark.parametrize(
    ("result", "outcome", "baseline", "phrase"),
    [
        # Retrieval is the best alternative and within the fine-tune's interval.
        (_hand_made(TIE, TIE, baseline="base_rag"), "tie", "base_rag", SUFFICES),
        # The fine-tune beats few-shot (the best by its point value), but not retrieval: retrieval suffices.
        (_hand_made(WIN, TIE), "tie", "base_rag", SUFFICES),
        # It beats retrieval too: fine-tuning pays.
        (_hand_made(WIN, WIN), "better", "few_shot", "The fine-tune beats few-shot prompting on contains"),
    ],
)
def test_the_verdict_weighs_retrieval_as_the_cheaper_option(result, outcome, baseline, phrase):
    said = verdict(result)
    assert (said["outcome"], said["baseline"]) == (outcome, baseline)
    assert phrase in said["sentences"][0]
    assert said["sentences"][-1] == (
        "Retrieval: the base model with retrieved passages against zero-shot prompting: +20.00 [+10.00, +30.00]; "
        "the fine-tune with retrieved passages against finetuned: +5.00 [-1.00, +11.00] on contains."
    )


@pytest.mark.parametrize(
    ("rag", "task", "message"),
    [
        ({"corpus": "c.jsonl"}, "retrieval", "eval.rag puts passages into prompts: it applies to eval.task"),
        ({"corpus": "c.jsonl", "encoder": "x"}, "qa", "eval.rag.encoder only applies to retriever=hybrid"),
        ({"corpus": "c.jsonl", "k": 0}, "qa", "eval.rag.k: Input should be greater than or equal to 1"),
        ({"retriever": "bm25"}, "qa", "missing key 'eval.rag.corpus'"),
    ],
)
def test_bad_rag_settings_are_config_errors(rag, task, message):
    with pytest.raises(TunesmithError, match=re.escape(message)):
        config_from_dict({"data": {"train": "t.jsonl"}, "eval": {"task": task, "rag": rag}})


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"id": "a", "text": "x"}', '{"text": "y"}'], "corpus.jsonl:2: id: missing key"),
        (['{"id": "a", "text": "x"}', '{"id": "a", "text": "y"}'], "corpus.jsonl:2: id: duplicate id 'a'"),
        (['{"id": "a", "txt": "x"}'], "corpus.jsonl:1: text: missing key"),
        (['{"id": "a", "text": ""}'], "corpus.jsonl:1: text: empty text"),
    ],
)
def test_a_bad_corpus_line_is_named_before_any_model_loads(tmp_path, lines, message):
    config = _config(tmp_path)
    (tmp_path / "corpus.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(TunesmithError, match=re.escape(message)):
        run.run_evaluation(config, None, str(tmp_path / "out"))


def test_a_text_corpus_is_blank_line_separated_passages_known_by_their_first_line(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("First passage,\nstill the first.\n\nSecond passage.\n")
    passages = read_passages(str(path))
    assert passages.ids == ["1", "4"]
    assert passages.texts[1] == "Second passage."
