"""`tunesmith interpolate`: WiSE-FT, the base and the fine-tune's weights mixed tensor by tensor.

theta = (1 - alpha) * base + alpha * tuned for every tensor, computed in float32 and stored in the
fine-tune's dtype, so alpha 0 gives the base's weights and alpha 1 the fine-tune's exactly. The
curve over several alphas (task metric against general-text perplexity) shows how much of the
fine-tune's gain survives at each level of forgetting: a cheap way to buy back general ability
without training again.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

from tunesmith.config import Config, load_config
from tunesmith.errors import TunesmithError
from tunesmith.evaluate.run import check_same_base, load_test_items, score_model
from tunesmith.evaluate.variants import model_folder
from tunesmith.models import load_model
from tunesmith.models.vocabulary import load_model_for
from tunesmith.paths import atomic_file, write_dir_atomic, write_text_atomic
from tunesmith.runfolder import CONFIG

CURVE_PLOT = "interpolation.png"
# Weight files the interpolated model replaces; everything else in the fine-tune's folder
# (tokenizer, chat rendering, generation config) is copied as it is.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".safetensors.index.json", ".bin.index.json")


def interpolate_state(base: dict, tuned: dict, alpha: float) -> dict:
    """(1 - alpha) * base + alpha * tuned, tensor by tensor; the two must have the same tensors."""
    if set(base) != set(tuned):
        missing = sorted(set(base) ^ set(tuned))[:3]
        raise TunesmithError(f"base and fine-tune have different tensors (e.g. {', '.join(missing)})")
    mixed = {}
    for name, tensor in tuned.items():
        if base[name].shape != tensor.shape:
            raise TunesmithError(
                f"tensor {name} has shape {tuple(tensor.shape)} in the fine-tune "
                f"and {tuple(base[name].shape)} in the base"
            )
        value = (1.0 - alpha) * base[name].float() + alpha * tensor.float()
        mixed[name] = value.to(tensor.dtype)
    return mixed


def _check_alpha(alpha: float) -> None:
    if not 0.0 <= alpha <= 1.0 or math.isnan(alpha):
        raise TunesmithError(f"--alpha {alpha} must be between 0 (the base) and 1 (the fine-tune)")


def run_config(run_dir: Path) -> Config:
    """The config a run was trained with (its base model, template and added tokens), from its config.yaml."""
    if not (run_dir / CONFIG).is_file():
        raise TunesmithError(f"{run_dir} is not a run folder: {CONFIG} not found (train first)")
    return load_config(run_dir / CONFIG)


def interpolate(run_dir: str | Path, alpha: float, out: str | Path | None = None) -> Path:
    """Write the model at `alpha` between the run's base and its fine-tune as a model folder
    (default RUN/interpolated/alpha-A), usable as `--finetuned` or `model:`."""
    _check_alpha(alpha)
    run_dir = Path(run_dir)
    config, tuned_folder = run_config(run_dir), model_folder(run_dir)
    base_name = config.model
    check_same_base(config, tuned_folder)
    target = Path(out) if out else run_dir / "interpolated" / f"alpha-{alpha:g}"
    import torch

    # The base with the tokens the run added (mean rows), so every tensor has the fine-tune's shape.
    base, tuned = load_model_for(config).model, load_model(tuned_folder).model
    with torch.no_grad():
        tuned.load_state_dict(interpolate_state(base.state_dict(), tuned.state_dict(), alpha))

    def fill(folder: Path) -> None:
        for file in Path(tuned_folder).iterdir():
            if file.is_file() and not file.name.endswith(WEIGHT_SUFFIXES):
                shutil.copy2(file, folder / file.name)
        tuned.save_pretrained(folder)
        (folder / "interpolation.json").write_text(
            json.dumps({"base": base_name, "tuned": tuned_folder, "alpha": alpha}) + "\n"
        )

    return write_dir_atomic(target, fill)


def parse_alphas(text: str) -> list[float]:
    try:
        alphas = sorted({float(a) for a in text.split(",") if a.strip()})
    except ValueError:
        raise TunesmithError(f"--alphas {text!r} must be numbers separated by commas, e.g. 0,0.5,1") from None
    if not alphas:
        raise TunesmithError("--alphas needs at least one number")
    for alpha in alphas:
        _check_alpha(alpha)
    return alphas


def interpolation_curve(
    run_dir: str | Path, alphas: list[float], config: Config, out: str | Path | None = None
) -> dict:
    """Each alpha's model written and scored on the config's test items: task metrics with intervals and
    general-text perplexity; curve.json, curve.md and a plot of the task metric against forgetting."""
    run_dir = Path(run_dir)
    folder = Path(out) if out else run_dir / "interpolated"
    items = load_test_items(config)
    rows = []
    for alpha in alphas:
        model = interpolate(run_dir, alpha, folder / f"alpha-{alpha:g}")
        variant, forgetting = score_model(config, str(model), items)
        rows.append(
            {"alpha": alpha, "model": str(model), "metrics": variant["metrics"], "general_perplexity": forgetting}
        )
    reference = next((r["general_perplexity"] for r in rows if r["alpha"] == 0.0), None)
    for row in rows:
        ppl = row["general_perplexity"]
        row["forgetting"] = ppl["value"] / reference["value"] - 1.0 if ppl and reference else None
    curve = {
        "run": str(run_dir),
        "folder": str(folder),
        "test_file": config.data.test,
        "items": len(items),
        "metric": next(iter(rows[0]["metrics"])),
        "alphas": rows,
    }
    write_text_atomic(folder / "curve.json", json.dumps(curve, indent=2) + "\n")
    write_text_atomic(folder / "curve.md", _table(curve))
    _plot(curve, folder / CURVE_PLOT)
    return curve


def _table(curve: dict) -> str:
    names = list(curve["alphas"][0]["metrics"])
    lines = [
        "| alpha | " + " | ".join(names) + " | general-text perplexity | forgetting |",
        "|" + "---|" * (len(names) + 3),
    ]
    for row in curve["alphas"]:
        cells = [f"{row['alpha']:g}"]
        cells += [f"{m['value']:.2f} [{m['low']:.2f}, {m['high']:.2f}]" for m in row["metrics"].values()]
        ppl = row["general_perplexity"]
        cells.append(f"{ppl['value']:.2f}" if ppl else "-")
        cells.append(f"{row['forgetting']:+.1%}" if row["forgetting"] is not None else "-")
        lines.append("| " + " | ".join(cells) + " |")
    note = "forgetting: relative rise of general-text perplexity over alpha 0 (the base); needs eval.general_text."
    return "\n".join(lines) + "\n\n" + note + "\n"


def _plot(curve: dict, path: Path) -> None:
    rows = [r for r in curve["alphas"] if r["forgetting"] is not None]
    if not rows:
        return
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; must precede pyplot
    import matplotlib.pyplot as plt

    metric = curve["metric"]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    xs, ys = [100 * r["forgetting"] for r in rows], [r["metrics"][metric]["value"] for r in rows]
    ax.plot(xs, ys, marker="o")
    for x, y, row in zip(xs, ys, rows, strict=True):
        ax.annotate(f"alpha {row['alpha']:g}", (x, y), textcoords="offset points", xytext=(4, 4))
    ax.set_xlabel("general-text perplexity rise over the base (%)")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    with atomic_file(path) as fh:
        fig.savefig(fh, format="png", bbox_inches="tight")
    plt.close(fig)
