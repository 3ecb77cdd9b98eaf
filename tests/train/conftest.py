import pytest

from tunesmith.config import config_from_dict


@pytest.fixture
def tiny_config(tiny_model_name, small_e2e, tmp_path):
    """A fast LoRA run on the tiny model; tests override what they need."""

    def make(**sections):
        raw = {
            "model": tiny_model_name,
            "data": {
                "train": str(small_e2e / "train.jsonl"),
                "validation": str(small_e2e / "validation.jsonl"),
                "max_seq_len": 128,
            },
            "method": {"name": "lora", "r": 8, "alpha": 16, "dropout": 0.1},
            "train": {
                "max_steps": 20,
                "batch_size": 4,
                "lr": 5e-3,
                "warmup_steps": 2,
                "eval_every": 5,
                "save_every": 10,
                "log_every": 5,
                "seed": 3,
                "dtype": "float32",
            },
            "eval": {"samples": 2, "max_new_tokens": 4},
            "out_dir": str(tmp_path / "run"),
        }
        for section, values in sections.items():
            if isinstance(values, dict):
                raw[section] = {**raw.get(section, {}), **values}
            else:
                raw[section] = values
        return config_from_dict(raw)

    return make
