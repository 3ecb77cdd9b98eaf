"""train.lr: auto, a learning-rate range test before training.

For STEPS optimizer steps on the training batches (the run's own first steps, same order), the lr
grows exponentially from START to END; the loss of each step is recorded. Then the weights, the
optimizer (a throwaway one: the run's optimizer is built afterwards with the chosen rate) and the
random number generators are put back exactly, so the run that follows is the run a fixed lr of
the same value would have given.

The rule: one tenth of the lr at the minimum of the smoothed loss (exponential moving average,
bias-corrected), searched only before the loss diverges (4x its minimum so far). Why not the
steepest descent: over a few dozen noisy steps the slope of the smoothed loss jumps around, while
its minimum is stable, and the minimum's lr is already at the edge of instability, so a tenth of it
is the usual safe margin (fastai's and Smith's practice).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from tunesmith.errors import TunesmithError
from tunesmith.paths import atomic_file, write_text_atomic
from tunesmith.runfolder import LR_FINDER, LR_FINDER_PLOT

START, END, STEPS = 1e-7, 1.0, 40
SMOOTHING = 0.9  # weight of the past in the moving average
DIVERGED = 4.0  # the test stops once the smoothed loss exceeds this many times its minimum
MARGIN = 10.0  # the chosen lr is the lr at the minimum / MARGIN


@dataclass
class LrCurve:
    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    chosen: float

    def as_dict(self) -> dict:
        rule = f"lr at the minimum of the smoothed loss / {MARGIN:g}"
        return {
            "rule": rule,
            "chosen_lr": self.chosen,
            "lrs": self.lrs,
            "losses": self.losses,
            "smoothed": self.smoothed,
        }


def lr_at(step: int, steps: int = STEPS, start: float = START, end: float = END) -> float:
    return start * (end / start) ** (step / max(steps - 1, 1))


def smooth(losses: list[float]) -> list[float]:
    average, out = 0.0, []
    for i, loss in enumerate(losses, 1):
        average = SMOOTHING * average + (1 - SMOOTHING) * loss
        out.append(average / (1 - SMOOTHING**i))
    return out


def pick_lr(lrs: list[float], losses: list[float]) -> tuple[float, list[float]]:
    """The chosen lr (the rule in the module's docstring) and the smoothed curve."""
    smoothed = smooth(losses)
    best = None
    for i, value in enumerate(smoothed):
        if not math.isfinite(value) or (best is not None and value > DIVERGED * smoothed[best]):
            break
        if best is None or value < smoothed[best]:
            best = i
    if best is None:
        raise TunesmithError("train.lr: auto: the loss was not finite from the first step; set train.lr by hand")
    return lrs[best] / MARGIN, smoothed


def range_test(params: list[torch.nn.Parameter], make_optimizer, train_step, steps: int | None = None) -> LrCurve:
    """`train_step(step)` runs forward and backward of one step's batches and returns its loss;
    `make_optimizer(lr)` a fresh optimizer over `params`. Everything is restored afterwards."""
    steps = steps or STEPS
    saved = [p.detach().clone() for p in params]
    rng = torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    optimizer = make_optimizer(lr_at(0, steps))
    lrs, losses = [], []
    try:
        for step in range(steps):
            lr = lr_at(step, steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = float(train_step(step))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            lrs.append(lr)
            losses.append(loss)
            if not math.isfinite(loss) or (len(losses) > 1 and loss > DIVERGED * min(losses)):
                break
    finally:
        with torch.no_grad():
            for param, value in zip(params, saved, strict=True):
                param.copy_(value)
                param.grad = None
        torch.set_rng_state(rng[0])
        if rng[1] is not None:
            torch.cuda.set_rng_state_all(rng[1])
    chosen, smoothed = pick_lr(lrs, losses)
    return LrCurve(lrs, losses, smoothed, chosen)


def save_curve(curve: LrCurve, out_dir: Path) -> None:
    """lr_finder.json (the numbers and the rule) and lr_finder.png (the curve, the choice marked)."""
    write_text_atomic(out_dir / LR_FINDER, json.dumps(curve.as_dict(), indent=2) + "\n")
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; must precede pyplot
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(curve.lrs, curve.losses, alpha=0.4, label="loss")
    ax.plot(curve.lrs, curve.smoothed, label="smoothed")
    ax.axvline(curve.chosen, color="k", linestyle="--", label=f"chosen {curve.chosen:.2e}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.legend()
    ax.grid(alpha=0.3)
    with atomic_file(out_dir / LR_FINDER_PLOT) as fh:
        fig.savefig(fh, format="png", bbox_inches="tight")
    plt.close(fig)


def read_chosen(out_dir: Path) -> float:
    """On resume: the rate the range test chose when the run started."""
    path = out_dir / LR_FINDER
    if not path.is_file():
        raise TunesmithError(f"--resume with train.lr: auto: {path} is missing; set train.lr to the rate the run used")
    return float(json.loads(path.read_text())["chosen_lr"])
