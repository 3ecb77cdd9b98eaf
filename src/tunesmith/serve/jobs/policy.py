"""What a job trains with when the request leaves it to the service ("auto")."""

from __future__ import annotations

import math

BASE_LORA_LR = 2e-4
# Encoder jobs train all weights (22M for minilm-l6): the rate of configs/scitldr_contrastive.yaml,
# which measured a gain over zero-shot MiniLM.
BASE_ENCODER_LR = 8e-5
AUTO_EPOCHS = 3
MIN_EXAMPLES_SEEN = 100
MAX_EXAMPLES_SEEN = 25_000
MAX_AUTO_EPOCHS = 25
MAX_AUTO_BATCH = 32
DPO_BETA = 0.1
# Reinforcement: compute_multiplier 1 samples rl.group_size's default of 4 answers per prompt.
BASE_GROUP_SIZE = 4
EVALUATIONS = 10  # per run, when eval_interval is "auto" (as for the other methods' validation loss)
VAL_FRACTION = 0.1  # held out of the training file when a job has no validation file (as the trainer does)


def total_steps(hyper: dict, n_train: int) -> int:
    """Optimizer steps of a job training on ``n_train`` items with resolved ``hyper`` (as the recipe counts)."""
    return math.ceil(n_train / hyper["batch_size"]) * hyper["n_epochs"]


def auto_eval_interval(total: int) -> int:
    return math.ceil(total / EVALUATIONS)


def group_size(compute_multiplier: float) -> int:
    """Answers sampled per prompt (rl.group_size): 4 times ``compute_multiplier``, at least 2 (a group
    of one has no baseline to be better than)."""
    return max(2, round(BASE_GROUP_SIZE * compute_multiplier))


def resolve_hyperparameters(
    requested: dict, n_examples: int, encoder: bool = False, n_train: int | None = None
) -> dict:
    """Replace "auto" (or missing) hyperparameters with the values a careful user would pick.

    - ``n_epochs``: 3, unless that shows the model fewer than 100 examples in total (tiny sets:
      raise it so ``n_epochs * n_examples >= 100``, at most 25 epochs) or more than 25,000 (large
      sets: lower it so the run stays around 25k examples seen, at least 1 epoch). This follows
      OpenAI's published rule of thumb.
    - ``batch_size``: about 0.2% of the training examples, rounded, clipped to [1, 32]: small
      sets still get many optimizer steps, large ones get less noisy gradients. An ``encoder``
      (contrastive) job takes 32, or all its pairs when it has fewer: every other document of a
      batch is a query's negative, so a small batch teaches little (a batch of 1, nothing).
    - ``learning_rate_multiplier``: 1.0, which means the base LoRA learning rate 2e-4 (an encoder
      job's full fine-tuning: 8e-5).
    - reinforcement: ``compute_multiplier`` 1.0 (``group_size``: 4 answers per prompt),
      ``eval_interval`` a tenth of the run's steps (``n_train`` items, rounded up), ``eval_samples``
      1 (one greedy answer per validation prompt); the grader is kept as given.
    """
    n = max(1, n_examples)
    epochs = requested.get("n_epochs", "auto")
    if epochs in (None, "auto"):
        epochs = AUTO_EPOCHS
        if n * epochs < MIN_EXAMPLES_SEEN:
            epochs = min(MAX_AUTO_EPOCHS, math.ceil(MIN_EXAMPLES_SEEN / n))
        elif n * epochs > MAX_EXAMPLES_SEEN:
            epochs = max(1, MAX_EXAMPLES_SEEN // n)
    batch = requested.get("batch_size", "auto")
    if batch in (None, "auto"):
        batch = min(MAX_AUTO_BATCH, n if encoder else max(1, round(0.002 * n)))
    multiplier = requested.get("learning_rate_multiplier", "auto")
    if multiplier in (None, "auto"):
        multiplier = 1.0
    resolved = {"n_epochs": int(epochs), "batch_size": int(batch), "learning_rate_multiplier": float(multiplier)}
    if requested.get("method") == "dpo":  # beta: "auto" is DPO's usual 0.1
        beta = requested.get("beta", "auto")
        resolved |= {"method": "dpo", "beta": DPO_BETA if beta in (None, "auto") else float(beta)}
    if requested.get("method") == "reinforcement":
        compute = requested.get("compute_multiplier", "auto")
        interval = requested.get("eval_interval", "auto")
        samples = requested.get("eval_samples", "auto")
        steps = total_steps(resolved, n_examples if n_train is None else n_train)
        resolved |= {
            "method": "reinforcement",
            "grader": requested["grader"],
            "compute_multiplier": 1.0 if compute in (None, "auto") else float(compute),
            "eval_interval": auto_eval_interval(steps) if interval in (None, "auto") else int(interval),
            "eval_samples": 1 if samples in (None, "auto") else int(samples),
            "reasoning_effort": "default",
        }
    return resolved
