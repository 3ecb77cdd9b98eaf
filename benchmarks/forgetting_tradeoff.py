"""One task's metric against forgetting, every way tunesmith trades them on one plot: the trials of a
`tunesmith tune` study, and the WiSE-FT interpolation curves (`tunesmith interpolate --alphas`) of
runs trained with and without replay of general text. All points must be scored on the same
validation items for the plot to compare them.

    python benchmarks/forgetting_tradeoff.py --study runs/trec_lora-tune \
        --curve "lr 1e-3=runs/trec_lora/curve-validation/curve.json" \
        --curve "lr 1e-3 + 10% replay=runs/trec_replay/curve-validation/curve.json" \
        --out benchmarks/results/forgetting_tradeoff.png

Writes the plot and, beside it, a Markdown table of every point (same name, .md).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402


def study_points(folder: Path) -> tuple[str, list[dict]]:
    """The complete trials of a study with a forgetting measurement: (metric, points)."""
    records = [json.loads(line) for line in (folder / "trials.jsonl").read_text().splitlines() if line.strip()]
    done = [r for r in records if r["state"] == "complete" and r["forgetting"] is not None]
    if not done:
        raise SystemExit(f"{folder}: no complete trial with a forgetting measurement")
    points = [
        {"label": f"trial {r['trial']}", "value": r["value"], "forgetting": r["forgetting"], "feasible": r["feasible"]}
        for r in done
    ]
    return done[0]["metric"], points


def curve_points(path: Path, metric: str | None) -> tuple[str, list[dict]]:
    curve = json.loads(path.read_text())
    metric = metric or curve["metric"]
    rows = [r for r in curve["alphas"] if r["forgetting"] is not None]
    if not rows:
        raise SystemExit(f"{path}: no forgetting measured (the --eval config needs eval.general_text)")
    points = [
        {"label": f"alpha {r['alpha']:g}", "value": r["metrics"][metric]["value"], "forgetting": r["forgetting"]}
        for r in rows
    ]
    return metric, points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", type=Path, help="a `tunesmith tune` folder (its trials.jsonl)")
    parser.add_argument("--curve", action="append", default=[], help="LABEL=path/to/curve.json; repeatable")
    parser.add_argument("--out", type=Path, required=True, help="the plot (.png); the table goes beside it (.md)")
    args = parser.parse_args()

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    lines = ["| series | point | metric | forgetting |", "|---|---|---:|---:|"]
    metric = None
    if args.study:
        metric, points = study_points(args.study)
        for feasible, marker in ((True, "o"), (False, "x")):
            chosen = [p for p in points if bool(p["feasible"]) == feasible]
            if chosen:
                ax.scatter(
                    [100 * p["forgetting"] for p in chosen],
                    [p["value"] for p in chosen],
                    marker=marker,
                    color="grey",
                    label="tune trials" + ("" if feasible else ", over the budget"),
                )
        lines += [f"| tune | {p['label']} | {p['value']:.1f} | {p['forgetting']:+.1%} |" for p in points]
    for spec in args.curve:
        label, _, path = spec.partition("=")
        metric, points = curve_points(Path(path), metric)
        xs, ys = [100 * p["forgetting"] for p in points], [p["value"] for p in points]
        ax.plot(xs, ys, marker="o", label=f"{label}: interpolation towards the base")
        for x, y, point in zip(xs, ys, points, strict=True):
            ax.annotate(point["label"].replace("alpha ", "a="), (x, y), textcoords="offset points", xytext=(3, 3))
        rows = zip(points, ys, strict=True)
        lines += [f"| {label} | {p['label']} | {y:.1f} | {p['forgetting']:+.1%} |" for p, y in rows]
    ax.set_xlabel("general-text perplexity rise over the base (%)")
    ax.set_ylabel(f"validation {metric}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, bbox_inches="tight")
    command = " ".join(shlex.quote(a) for a in ["python", "benchmarks/forgetting_tradeoff.py", *sys.argv[1:]])
    header = [f"Command: `{command}`", "", f"metric: validation {metric}; forgetting: general-text perplexity rise", ""]
    args.out.with_suffix(".md").write_text("\n".join(header + lines) + "\n")
    print(args.out, args.out.with_suffix(".md"))


if __name__ == "__main__":
    main()
