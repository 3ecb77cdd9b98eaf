"""The real SmolLM2-135M-Instruct, fine-tuned for a few steps on real E2E data."""

import json

from tunesmith.config import config_from_dict
from tunesmith.train.recipe import train


def test_real_model_validation_loss_falls_in_a_few_steps(tmp_path, small_e2e):
    cfg = config_from_dict(
        {
            "model": "smollm2-135m-instruct",
            "data": {
                "train": str(small_e2e / "train.jsonl"),
                "validation": str(small_e2e / "validation.jsonl"),
                "max_seq_len": 160,  # the longest of these examples has 134 tokens
            },
            "method": {"name": "lora", "r": 8, "alpha": 16},
            "train": {"max_steps": 6, "batch_size": 4, "lr": 1e-3, "warmup_steps": 1, "eval_every": 6, "log_every": 1},
            "eval": {"samples": 0},
            "out_dir": str(tmp_path / "run"),
        }
    )
    summary = train(cfg)
    # The instruct model already writes English; 6 steps on the task cut the loss clearly.
    assert summary.best_val_loss < summary.initial_val_loss - 0.2
    metrics = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert all(m["tokens_per_second"] > 0 for m in metrics if "tokens_per_second" in m)
