"""Early stopping on validation loss, with the bookkeeping that picks the best checkpoint."""

from __future__ import annotations

from dataclasses import dataclass


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
