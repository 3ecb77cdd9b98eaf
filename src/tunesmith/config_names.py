"""The config keys a user most likely meant: names they bring from other trainers, then close spellings.

transformers' TrainingArguments, TRL, PEFT, Axolotl and LLaMA-Factory name the same settings differently;
an unknown key named as one of them is answered with tunesmith's key, wherever in the YAML it was written.
"""

from __future__ import annotations

import difflib

FOREIGN_NAMES = {
    # transformers TrainingArguments (and so TRL)
    "learning_rate": "train.lr",
    "num_train_epochs": "train.epochs",
    "num_epochs": "train.epochs",
    "per_device_train_batch_size": "train.batch_size",
    "train_batch_size": "train.batch_size",
    "micro_batch_size": "train.batch_size",
    "batch_size": "train.batch_size",
    "gradient_accumulation_steps": "train.grad_accum",
    "warmup_ratio": "train.warmup_steps",
    "warmup_steps": "train.warmup_steps",
    "weight_decay": "train.weight_decay",
    "max_grad_norm": "train.max_grad_norm",
    "max_steps": "train.max_steps",
    "seed": "train.seed",
    "lr_scheduler_type": "train.scheduler",
    "lr_scheduler": "train.scheduler",
    "optim": "train.optimizer",
    "eval_steps": "train.eval_every",
    "save_steps": "train.save_every",
    "logging_steps": "train.log_every",
    "bf16": "train.dtype",
    "fp16": "train.dtype",
    "torch_dtype": "train.dtype",
    "torch_compile": "train.compile",
    "early_stopping_patience": "train.early_stopping.patience",
    "early_stopping_threshold": "train.early_stopping.min_delta",
    "output_dir": "out_dir",
    "model_name_or_path": "model",
    "base_model": "model",
    "model_name": "model",
    # PEFT, Axolotl, LLaMA-Factory
    "lora_r": "method.r",
    "lora_rank": "method.r",
    "lora_alpha": "method.alpha",
    "lora_dropout": "method.dropout",
    "lora_target_modules": "method.target_modules",
    "lora_target": "method.target_modules",
    "adapter": "method.name",
    "finetuning_type": "method.name",
    "pref_beta": "method.beta",
    "rpo_alpha": "method.sft_weight",
    "max_seq_length": "data.max_seq_len",
    "sequence_len": "data.max_seq_len",
    "cutoff_len": "data.max_seq_len",
    "max_length": "data.max_seq_len",
    "model_max_length": "data.max_seq_len",
    "dataset": "data.train",
    "datasets": "data.train",
    "train_file": "data.train",
    "data_path": "data.train",
    "validation_file": "data.validation",
    "eval_dataset": "data.validation",
    "test_file": "data.test",
    "val_set_size": "data.val_fraction",
    "sample_packing": "data.packing",
    "dataset_num_proc": "data.num_workers",
    "preprocessing_num_workers": "data.num_workers",
    "system_prompt": "data.system",
    "default_system": "data.system",
}

# Where the meaning differs, not only the name.
NOTES = {
    "warmup_ratio": "it counts optimizer steps, not a share of them",
    "bf16": "auto, float32 or bfloat16",
    "fp16": "auto, float32 or bfloat16",
    "torch_dtype": "auto, float32 or bfloat16",
    "adapter": "lora, full or dpo",
    "finetuning_type": "lora, full or dpo",
    "val_set_size": "a share of train, below 1",
}


def did_you_mean(key: str, known: list[str]) -> str:
    """' (did you mean ...?)' for an unknown dotted key, or '' when nothing is near."""
    section, _, leaf = key.lower().rpartition(".")
    if leaf in FOREIGN_NAMES:
        note = f" {NOTES[leaf]}" if leaf in NOTES else ""
        return f" (did you mean {FOREIGN_NAMES[leaf]!r}?{note})"
    by_leaf: dict[str, list[str]] = {}
    for name in known:
        by_leaf.setdefault(name.rpartition(".")[2], []).append(name)
    for alias, target in FOREIGN_NAMES.items():
        by_leaf.setdefault(alias, []).append(target)
    # The right name in the wrong section, or a misspelt name (of tunesmith's or of another trainer's).
    close = by_leaf.get(leaf) or [
        t for c in difflib.get_close_matches(leaf, by_leaf, n=1, cutoff=0.75) for t in by_leaf[c]
    ]
    names = list(dict.fromkeys(close or difflib.get_close_matches(key, known, n=1, cutoff=0.5)))
    in_section = [n for n in names if n.rpartition(".")[0] == section]
    names = in_section or names
    return f" (did you mean {' or '.join(repr(n) for n in names)}?)" if names else ""
