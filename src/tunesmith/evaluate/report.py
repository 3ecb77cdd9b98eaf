"""report.html and report.md from the result of `run_evaluation`.

Both are rendered from the same list of table sections, so they cannot disagree. The HTML file is
self-contained (the loss-curve plot is an inline base64 PNG, no scripts or external styles) so it
opens offline and survives being mailed around; the Markdown file links the same plot, written
next to it as loss_curve.png.
"""

from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

from tunesmith.evaluate.metrics import LOWER_IS_BETTER
from tunesmith.paths import write_text_atomic

VARIANT_TITLES = {
    "bm25": "BM25",
    "linear_probe": "base, linear probe",
    "zero_shot": "base, zero-shot",
    "zero_shot_maxsim": "base, zero-shot, late interaction (MaxSim)",
    "few_shot": "base, few-shot",
    "base_rag": "base + retrieved",
    "decoder_zero_shot": "decoder, zero-shot",
    "decoder_few_shot": "decoder, few-shot",
    "finetuned": "fine-tuned",
    "finetuned_rag": "fine-tuned + retrieved",
    "hybrid_zero_shot": "BM25 + base (hybrid)",
    "hybrid_zero_shot_maxsim": "BM25 + base late interaction (hybrid)",
    "hybrid_finetuned": "BM25 + fine-tuned (hybrid)",
}
PLOT_FILE = "loss_curve.png"
GAIN_HEADERS = ["metric", "vs", "difference", "interval excludes 0"]


@dataclass
class Section:
    id: str
    title: str
    headers: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)


def _fmt(value, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _with_ci(metric: dict, digits: int = 1) -> str:
    return f"{_fmt(metric['value'], digits)} [{_fmt(metric['low'], digits)}, {_fmt(metric['high'], digits)}]"


def _grader_score(metric: str) -> bool:
    """A grader's mean score (the whole grader's or one part's): in [0, 1], not a percentage."""
    return metric.startswith("mean_score")


def _digits(task: str, metric: str) -> int:
    # A grader's mean score lies in [0, 1] (a share of slots, a similarity): one decimal would show
    # 0.77 and 0.91 as 0.8 and 0.9. Perplexities need two; percentages one.
    return 3 if _grader_score(metric) else 2 if task == "text" else 1


def _quality(result: dict) -> Section:
    variants = result["variants"]
    names = list(next(iter(variants.values()))["metrics"]) if variants else []
    rows = [
        [VARIANT_TITLES[v], *(_with_ci(data["metrics"][n], _digits(result["task"], n)) for n in names)]
        for v, data in variants.items()
    ]
    conf = result["confidence"]
    # Graded prompts have no references, perplexity and a grader's mean score are not shares.
    references = f" ({result['references']} references)" if result["references"] else ""
    shares = any(n not in LOWER_IS_BETTER and not _grader_score(n) for n in names)
    notes = [
        f"{result['items']} test items{references}. Brackets: "
        f"{conf['level']:.0%} bootstrap confidence interval ({conf['resamples']} resamples of the items, "
        f"percentile method, seed {conf['seed']})." + (" Shares are in percent." if shares else "")
    ]
    if result.get("few_shot"):
        few = result["few_shot"]
        notes.append(
            f"few-shot: {few['mean_shots']:.1f} examples per prompt on average (budget {few['budget']} tokens)."
        )
    if result.get("rag"):
        rag = result["rag"]
        notes.append(
            f"+ retrieved: the top {rag['k']} of the {rag['passages']} passages of {rag['corpus']} by "
            f"{rag['retriever']}, before the question in its user turn (docs/evaluation.md)."
        )
    if result["task"] == "classification":
        notes.append(
            "accuracy and macro-F1 use constrained scoring: the label (plus end-of-turn token) with "
            "the highest mean log-prob per token; parse rate is the share of free greedy answers "
            "that are a label."
        )
    return Section("quality", "Quality", ["variant", *names], rows, notes)


def _gain_rows(gains: dict) -> list[list[str]]:
    return [
        [name, VARIANT_TITLES[g["baseline"]], _with_ci(g, 2), "yes" if g["low"] > 0 or g["high"] < 0 else "no"]
        for name, g in gains.items()
    ]


def _gain(result: dict) -> Section:
    rows = _gain_rows(result.get("gain", {}))
    notes = (
        [
            "Fine-tuned minus the better base variant on the same items; paired bootstrap interval. "
            "A gain is real when its interval excludes 0 (for perplexity, lower is better: a gain is negative)."
        ]
        if rows
        else ["no fine-tuned model evaluated."]
    )
    return Section("gain", "Did fine-tuning help?", GAIN_HEADERS, rows, notes)


def _hybrid_gain(result: dict) -> Section:
    notes = [
        "BM25 + fine-tuned (reciprocal rank fusion) minus the best system without the fine-tune, BM25 + base "
        "encoder included; paired bootstrap interval."
    ]
    return Section(
        "hybrid", "Does fine-tuning help hybrid search?", GAIN_HEADERS, _gain_rows(result["hybrid_gain"]), notes
    )


def _rag_gain(result: dict) -> Section:
    rows = [
        [VARIANT_TITLES[tuned], *row]
        for tuned, by_metric in result["rag_gain"].items()
        for row in _gain_rows(by_metric)
    ]
    said = {
        "base_rag": "base + retrieved minus the better of base zero-shot and few-shot",
        "finetuned": "fine-tuned minus base + retrieved (is retrieval alone enough?)",
        "finetuned_rag": "fine-tuned + retrieved minus the best other variant",
    }
    notes = ["; ".join(said[tuned] for tuned in result["rag_gain"]).capitalize() + "; paired bootstrap intervals."]
    return Section("rag", "Does retrieval help?", ["variant", *GAIN_HEADERS], rows, notes)


def _cost(result: dict) -> Section:
    rows = [
        [
            VARIANT_TITLES[v],
            _fmt(data["cost"]["prompt_tokens"], 0),
            _fmt(data["cost"]["generated_tokens"]),
            _fmt(data["cost"]["tokens_per_second"], 0),
        ]
        for v, data in result["variants"].items()
    ]
    notes = []
    variants = result["variants"]
    if "base_rag" in variants:
        passages = variants["base_rag"]["cost"]["prompt_tokens"] - variants["zero_shot"]["cost"]["prompt_tokens"]
        notes.append(
            f"+ retrieved: the {result['rag']['k']} passages add {_fmt(passages, 1)} prompt tokens per request "
            "(counted in its prompt tokens)."
        )
    training = result.get("training")
    if training:
        notes.append(
            f"fine-tune: {_fmt(training['trained_tokens'])} training tokens, "
            f"{_fmt(training['steps'])} steps, {_fmt(training['wall_seconds'])} s wall time."
        )
    elif result.get("finetuned"):
        notes.append("fine-tune cost unknown: the run folder has no summary.json.")
    headers = ["variant", "prompt tokens / request", "generated tokens / request", "generation tokens/s"]
    return Section("cost", "Cost", headers, rows, notes)


def _forgetting(result: dict) -> Section:
    names = {"base": "base", "finetuned": "fine-tuned"}
    rows = [[names[model], _with_ci(value, 2)] for model, value in result.get("forgetting", {}).items()]
    notes = [] if rows else ["not measured: set eval.general_text to a general-text file."]
    return Section("forgetting", "Forgetting monitor", ["model", "general-text perplexity"], rows, notes)


def _verdict(result: dict) -> Section:
    said = (result.get("verdict") or {}).get("sentences") or ["No verdict: the result has none."]
    return Section("verdict", "Verdict", [], [], said)


def _samples(result: dict) -> Section:
    samples = result.get("samples", [])
    shown = [v for v in VARIANT_TITLES if samples and v in samples[0]]
    rows = [
        [s["input"], "\n".join(s["references"]), *(s[v] if s[v] is not None else "-" for v in shown)] for s in samples
    ]
    headers = ["input", "reference", *(VARIANT_TITLES[v] for v in shown)]
    if samples and "retrieved" in samples[0]:
        rows = [[*row, ", ".join(s["retrieved"])] for row, s in zip(rows, samples, strict=True)]
        headers.append("retrieved passages")
    return Section("samples", "Test items side by side", headers, rows)


def _loss_plot(curve: dict | None) -> bytes | None:
    if not curve or not (curve["train"] or curve["val"]):
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; must precede pyplot
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for name, points in curve.items():
        if points:
            steps, losses = zip(*points, strict=True)
            ax.plot(steps, losses, marker="o" if name == "val" else None, label=f"{name} loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _html_table(section: Section) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in section.headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in section.rows)
    notes = "".join(f"<p>{html.escape(n)}</p>" for n in section.notes)
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>" if section.rows else ""
    return f'<section id="{section.id}"><h2>{html.escape(section.title)}</h2>{table}{notes}</section>'


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "<br>")


def _md_table(section: Section) -> str:
    lines = [f"## {section.title}", ""]
    if section.rows:
        lines.append("| " + " | ".join(section.headers) + " |")
        lines.append("|" + "---|" * len(section.headers))
        lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in section.rows]
        lines.append("")
    lines += [*section.notes, ""] if section.notes else []
    return "\n".join(lines)


STYLE = (
    "body{font-family:sans-serif;max-width:70em;margin:2em auto;padding:0 1em}"
    "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;"
    "vertical-align:top;white-space:pre-wrap}th{background:#f3f3f3}"
)


def write_reports(result: dict, folder: Path) -> None:
    hybrid = [_hybrid_gain(result)] if result.get("hybrid_gain") else []
    rag = [_rag_gain(result)] if result.get("rag_gain") else []
    sections = [
        _verdict(result),
        _quality(result),
        _gain(result),
        *hybrid,
        *rag,
        _cost(result),
        _forgetting(result),
        _samples(result),
    ]
    title = f"tunesmith eval: {result['model']} on {result['test_file']} ({result['task']})"
    plot = _loss_plot(result.get("loss_curve"))
    missing = "not available: the run folder has no metrics.jsonl."
    if plot:
        (folder / PLOT_FILE).write_bytes(plot)
        encoded = base64.b64encode(plot).decode()
        img = f'<img alt="train and validation loss" src="data:image/png;base64,{encoded}">'
        md_plot = f"![train and validation loss]({PLOT_FILE})"
    else:
        img, md_plot = f"<p>{missing}</p>", missing
    loss_html = f'<section id="loss"><h2>Loss curves</h2>{img}</section>'
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in result.get("notes", []))
    parts = [*(_html_table(s) for s in sections[:2]), loss_html, *(_html_table(s) for s in sections[2:])]
    page = (
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
        + (f"<ul>{notes}</ul>" if notes else "")
        + "".join(parts)
        + "</body></html>\n"
    )
    write_text_atomic(folder / "report.html", page)
    markdown = [f"# {title}", "", *(f"- {n}" for n in result.get("notes", [])), ""]
    markdown += [*(_md_table(s) for s in sections[:2]), "## Loss curves", "", md_plot, ""]
    markdown += [_md_table(s) for s in sections[2:]]
    write_text_atomic(folder / "report.md", "\n".join(markdown))
