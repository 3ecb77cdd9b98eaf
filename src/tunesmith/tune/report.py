"""What `tunesmith tune` leaves in its folder and says as it goes: a line per trial on stderr,
trials.jsonl (one line per finished trial), trials.csv and trials.md (the whole study), pareto.png
(validation metric against forgetting) and best.yaml (the base config with the best trial's values).

All of them are made from the study's storage, so a resumed study's reports cover every trial.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from pathlib import Path

from tunesmith.config import config_from_dict, dump_config
from tunesmith.paths import atomic_file, write_text_atomic
from tunesmith.runfolder import VAL_LOSS
from tunesmith.tune.space import apply_values

RESULTS = "trials.jsonl"
TABLE_CSV, TABLE_MD = "trials.csv", "trials.md"
PARETO_PLOT = "pareto.png"
BEST_CONFIG = "best.yaml"


def _number(value):
    """Finite numbers as they are, anything else as None (JSON has no NaN)."""
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


def _state(trial) -> str:
    return {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running", "WAITING": "queued"}[
        trial.state.name
    ]


def feasible(trial) -> bool | None:
    """Within the forgetting budget (always, without one); None for a trial without a score."""
    if trial.state.name != "COMPLETE":
        return None
    return all(value <= 0 for value in trial.constraints.values())


def _note(trial) -> str:
    attrs = trial.user_attrs
    notes = []
    if attrs.get("baseline"):
        notes.append("the config as written")
    if "retry_of" in attrs:
        notes.append(f"retry of trial {attrs['retry_of']}")
    if attrs.get("stopped_at") is not None:
        notes.append(f"pruned at step {attrs['stopped_at']}")
    if attrs.get("error"):
        notes.append(attrs["error"])
    elif trial.state.name == "FAIL":
        notes.append("interrupted (the command was stopped): its values were queued again")
    return "; ".join(notes)


def trial_record(trial, goal) -> dict:
    attrs = trial.user_attrs
    return {
        "trial": trial.number,
        "state": _state(trial),
        "metric": goal.metric,
        "value": _number(trial.value) if trial.state.name == "COMPLETE" else None,
        "forgetting": _number(attrs.get("forgetting")),
        "feasible": feasible(trial),
        "params": trial.params,
        "val_loss": _number(attrs.get("val_loss")),
        "general_perplexity": _number(attrs.get("general_perplexity")),
        "steps": attrs.get("steps"),
        "seconds": attrs.get("seconds"),
        "note": _note(trial),
    }


def append_result(out: Path, trial, goal) -> None:
    with open(Path(out) / RESULTS, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(trial_record(trial, goal)) + "\n")


def best_number(study) -> int | None:
    """The best feasible finished trial (Optuna leaves trials over a constraint out), or None."""
    try:
        return study.best_trial.number
    except ValueError:  # no complete trial, or none feasible
        return None


def say(text: str) -> None:
    """A progress line on stderr (never inside a trial, whose output goes to its log file)."""
    print(text, file=sys.stderr, flush=True)


def _value(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def start_line(number: int, values: dict, retry_of: int | None) -> str:
    drawn = "  ".join(f"{key}={_value(value)}" for key, value in values.items())
    return f"trial {number}: {drawn}" + (f" (retry of trial {retry_of})" if retry_of is not None else "")


def progress_line(trial, study, goal) -> str:
    """What became of a trial, and the best so far."""
    record = trial_record(trial, goal)
    if record["state"] == "complete":
        text = f"trial {trial.number}: {goal.metric} {_value(record['value'])}"
        if record["forgetting"] is not None:
            text += f", forgetting {record['forgetting']:+.1%}"
        if record["feasible"] is False:
            text += f" (over the {goal.max_forgetting:.1%} budget: never chosen)"
    elif record["state"] == "pruned":
        step, loss = trial.user_attrs.get("stopped_at"), _value(record["val_loss"])
        text = f"trial {trial.number}: pruned at step {step} (best validation loss {loss})"
    else:
        text = f"trial {trial.number}: failed: {record['note']}"
    text += f", {_value(record['seconds'])} s"
    best = best_number(study)
    if best is None:
        return text + "; no feasible trial yet"
    leader = next(t for t in study.get_trials(deepcopy=False) if t.number == best)
    return text + f"; best: trial {best} ({goal.metric} {_value(leader.value)})"


def _columns(records: list[dict], space_keys: list[str], metric: str) -> list[str]:
    params = list(space_keys) + sorted({k for r in records for k in r["params"]} - set(space_keys))
    scores = ["trial", "state", "value", "forgetting", "feasible", "best"]
    loss = [] if metric == VAL_LOSS else ["val_loss"]  # a study scored on the loss has it as its value
    return [*scores, *params, *loss, "steps", "seconds", "note"]


def _rows(records: list[dict], best: int | None, columns: list[str]) -> list[dict]:
    rows = []
    for record in records:
        row = {**record, **record["params"], "best": record["trial"] == best}
        rows.append({column: row.get(column) for column in columns})
    return rows


def write_reports(out: Path, study, plan) -> None:
    """trials.csv, trials.md, pareto.png and best.yaml from the study as it is now."""
    out, goal = Path(out), plan.goal
    trials = study.get_trials(deepcopy=False)
    records = [trial_record(t, goal) for t in trials]
    best = best_number(study)
    columns = _columns(records, list(plan.space), goal.metric)
    rows = _rows(records, best, columns)
    header = [goal.metric if c == "value" else c for c in columns]

    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if v is None else v for v in row.values()])
    write_text_atomic(out / TABLE_CSV, text.getvalue())

    plotted = plot_pareto(records, goal, best, out / PARETO_PLOT)
    write_text_atomic(out / TABLE_MD, _markdown(records, rows, header, goal, best, plan, plotted))
    if best is not None:
        write_best_config(out / BEST_CONFIG, plan, next(t for t in trials if t.number == best), len(trials))


def _markdown(records, rows, header, goal, best, plan, plotted: bool) -> str:
    states = [r["state"] for r in records]
    counts = ", ".join(f"{states.count(s)} {s}" for s in ("complete", "pruned", "failed", "running") if s in states)
    lines = [
        "# Hyperparameter search",
        "",
        f"{len(records)} trials ({counts}), scored on the validation split's {goal.metric} "
        f"({goal.direction}); the test split was not read.",
    ]
    if goal.max_forgetting is not None:
        lines.append(
            f"Forgetting budget: general-text perplexity at most {goal.max_forgetting:.1%} above the base model's "
            f"({plan.base_perplexity:.3f}); a trial over it is never chosen."
        )
    elif plan.base_perplexity is not None:
        lines.append(f"Base model's general-text perplexity: {plan.base_perplexity:.3f}.")
    lines.append("")
    if best is None:
        lines.append("No trial has a score within the budget yet.")
    else:
        lines.append(f"Best: trial {best}, written as `{BEST_CONFIG}` (train it with `tunesmith train {BEST_CONFIG}`).")
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = []
        for key, value in row.items():
            if key == "forgetting" and value is not None:
                cells.append(f"{value:+.1%}")
            elif key == "best":
                cells.append("**best**" if value else "")
            else:
                cells.append(_value(value).replace("|", "\\|"))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if plotted:
        lines += [f"![{goal.metric} against forgetting]({PARETO_PLOT})", ""]
    else:
        lines += ["No Pareto plot: set eval.general_text to measure forgetting.", ""]
    return "\n".join(lines)


def pareto_front(points: list[tuple[int, float, float]], direction: str) -> list[int]:
    """Trials no other trial beats on both the metric and forgetting: (trial, forgetting, value) points."""
    sign = 1.0 if direction == "maximize" else -1.0
    front, best = [], -math.inf
    for number, _, value in sorted(points, key=lambda p: (p[1], -sign * p[2])):
        if sign * value > best:
            front.append(number)
            best = sign * value
    return front


def plot_pareto(records: list[dict], goal, best: int | None, path: Path) -> bool:
    """The validation metric against forgetting, the front joined, trials over the budget crossed out."""
    scored = [r for r in records if r["value"] is not None and r["forgetting"] is not None]
    if not scored:
        return False
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; must precede pyplot
    import matplotlib.pyplot as plt

    front = pareto_front([(r["trial"], r["forgetting"], r["value"]) for r in scored], goal.direction)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    within = [r for r in scored if r["feasible"]]
    over = [r for r in scored if not r["feasible"]]
    ax.scatter([100 * r["forgetting"] for r in within], [r["value"] for r in within], label="trial", zorder=2)
    if over:
        ax.scatter(
            [100 * r["forgetting"] for r in over], [r["value"] for r in over], marker="x", color="grey",
            label="over the forgetting budget", zorder=2,
        )  # fmt: skip
    on_front = sorted((r for r in scored if r["trial"] in front), key=lambda r: r["forgetting"])
    ax.plot([100 * r["forgetting"] for r in on_front], [r["value"] for r in on_front], color="C1", label="Pareto front")
    for r in scored:
        ax.annotate(str(r["trial"]), (100 * r["forgetting"], r["value"]), textcoords="offset points", xytext=(4, 4))
    if best is not None:
        chosen = next((r for r in scored if r["trial"] == best), None)
        if chosen:
            ax.scatter([100 * chosen["forgetting"]], [chosen["value"]], marker="*", s=200, color="C2", label="best")
    if goal.max_forgetting is not None:
        ax.axvline(100 * goal.max_forgetting, linestyle="--", color="grey", label="forgetting budget")
    ax.set_xlabel("general-text perplexity rise over the base (%)")
    ax.set_ylabel(f"validation {goal.metric}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    with atomic_file(path) as fh:
        fig.savefig(fh, format="png", bbox_inches="tight")
    plt.close(fig)
    return True


def write_best_config(path: Path, plan, trial, n_trials: int) -> None:
    """The base config with the trial's values: its out_dir and data.test as the user wrote them, for
    the one training and test evaluation that follow."""
    config = config_from_dict(apply_values(plan.raw, trial.params), f"trial {trial.number}")
    forgetting = trial.user_attrs.get("forgetting")
    lines = [
        f"# tunesmith tune: the best of {n_trials} trials, trial {trial.number} "
        f"({plan.goal.metric} {trial.value:.4g} on the validation split"
        + (f", forgetting {forgetting:+.1%})" if forgetting is not None else ")"),
        "# values chosen: " + ", ".join(f"{key}={_value(value)}" for key, value in trial.params.items()),
        f"# next: tunesmith train {path} (then data.test is evaluated, once)",
    ]
    write_text_atomic(path, "\n".join(lines) + "\n" + dump_config(config))
