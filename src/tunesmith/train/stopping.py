"""Early stopping on validation loss, with the bookkeeping that picks the best checkpoint; and the
stop of a diverged run."""

from __future__ import annotations

import math
from dataclasses import dataclass

from tunesmith.errors import TunesmithError


def stop_if_diverged(record: dict, policy: str) -> None:
    """Under ``train.nan_policy: stop``, a metrics line with a NaN or infinite number ends the run."""
    bad = [f"{k}={v}" for k, v in record.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad and policy == "stop":
        raise TunesmithError(
            f"step {record['step']}: {', '.join(bad)}: the run diverged (train.nan_policy: stop); "
            "lower train.lr, keep train.max_grad_norm set, or train in float32"
        )


@dataclass
class EarlyStopping:
    patience: int | None  # None: never stop early, still track the best
    min_delta: float = 0.0
    best_loss: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0

    def update(self, step: int, val_loss: float) -> bool:
        """Record an evaluation; True when it is a new best (by more than min_delta)."""
        if self.best_loss is None or val_loss < self.best_loss - self.min_delta:
            self.best_loss, self.best_step = val_loss, step
            self.evals_without_improvement = 0
            return True
        self.evals_without_improvement += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.evals_without_improvement >= self.patience
