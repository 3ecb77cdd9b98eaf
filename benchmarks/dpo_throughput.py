"""tunesmith DPO vs TRL's DPOTrainer: the same pairs, model, LoRA, lengths, batch and optimizer steps.

    python benchmarks/dpo_throughput.py                # every configuration, --steps 20
    python benchmarks/dpo_throughput.py --quick        # 3-step smoke test of the whole harness
    python benchmarks/dpo_throughput.py --only tunesmith trl-defaults --repeats 3

Work: HH-RLHF harmless pairs (data/hh_rlhf_harmless/train.jsonl) whose both sides fit in
--max-len tokens as tunesmith tokenizes them (so neither trainer truncates), SmolLM2-135M-Instruct,
LoRA r=16 alpha=32 on all linear layers, beta 0.1, lr 5e-4, --batch-size pairs per optimizer step.
Each configuration runs in its own process (its own peak RSS) and prints one JSON line; with
--repeats R the configurations alternate R times (interleaved, so background load hits all of them
alike) and the table shows medians. Pairs/s are timed from the end of warm-up step W to the end of
the last step, at the same point for both trainers (the end of each optimizer step). The final
validation reward accuracy and DPO loss of every run come from one function, tunesmith's DPO
validation pass (train/objective.py evaluate_model, float32, reference = the adapter disabled), on
held-out pairs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from machine import cpu_flags, medians, ratio, run_worker  # noqa: E402
from train_throughput import _device, _peak_rss_mb, _sync, _throughput, clock_recipe_steps  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PAIRS = REPO / "data/hh_rlhf_harmless/train.jsonl"
RESULTS = REPO / "benchmarks/results/dpo_throughput.md"
LORA = {"r": 16, "alpha": 32, "dropout": 0.0}
LR, BETA = 5e-4, 0.1
VALIDATION_PAIRS = 64

RUNS = {
    "tunesmith": "tunesmith defaults: every pair in one packed row, its prompt once, reference = adapter disabled",
    "trl-defaults": "DPOTrainer defaults (padded, gradient checkpointing, reference = adapter disabled)",
    "trl-no-checkpointing": "DPOTrainer, gradient_checkpointing=False",
    "trl-padding-free": "DPOTrainer, padding_free=True, gradient_checkpointing=False",
    "trl-precomputed-ref": "DPOTrainer, precompute_ref_log_probs=True, gradient_checkpointing=False",
}
TRL_OPTIONS = {
    "trl-defaults": {},
    "trl-no-checkpointing": {"gradient_checkpointing": False},
    "trl-padding-free": {"padding_free": True, "gradient_checkpointing": False},
    "trl-precomputed-ref": {"precompute_ref_log_probs": True, "gradient_checkpointing": False},
}


def fitting_pairs(model: str, max_len: int, n: int) -> list[dict]:
    """The first n raw pairs whose sides fit max_len tokens untruncated, with nothing dropped."""
    from tunesmith.data.preference import read_pairs, tokenize_pair
    from tunesmith.models import load_tokenizer

    tokenizer = load_tokenizer(model)
    lines = PAIRS.read_text(encoding="utf-8").splitlines()
    chosen = []
    for pair in read_pairs(PAIRS).examples:
        t = tokenize_pair(tokenizer, pair, max_len)
        if not t.dropped_turns and max(t.chosen.original_length, t.rejected.original_length) <= max_len:
            chosen.append(json.loads(lines[pair.line - 1]))
        if len(chosen) == n:
            return chosen
    raise SystemExit(f"only {len(chosen)} pairs fit --max-len {max_len}; {n} needed")


def _write(rows: list[dict], folder: Path, name: str) -> Path:
    path = folder / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _config(model: str, train: Path, validation: Path, args, out: Path):
    from tunesmith.config import config_from_dict

    return config_from_dict(
        {
            "model": model,
            "data": {"train": str(train), "validation": str(validation), "max_seq_len": args.max_len},
            "method": {"name": "dpo", "beta": BETA, **LORA},
            "train": {
                "max_steps": args.steps,
                "batch_size": args.batch_size,
                "lr": LR,
                "warmup_steps": min(3, args.steps),
                "log_every": 1,
                "eval_every": 10 * args.steps,
                "save_every": 10 * args.steps,
                "seed": 0,
            },
            "eval": {"samples": 0},
            "out_dir": str(out),
        }
    )


def validation_metrics(peft_model, cfg) -> dict:
    """One definition for every run: tunesmith's DPO validation pass, float32, on the held-out pairs."""
    from tunesmith.data.prepare import prepare_data
    from tunesmith.models import load_tokenizer
    from tunesmith.train.dpo import DPOObjective
    from tunesmith.train.objective import evaluate_model

    tokenizer = load_tokenizer(cfg.model)
    # float32 and padded batches: any model's attention runs them, TRL's included.
    cfg.train.dtype, cfg.data.packing = "float32", False
    data = prepare_data(cfg.data, tokenizer)
    objective = DPOObjective(cfg, tokenizer.pad_token_id, _device())
    return evaluate_model(peft_model, objective, data.validation, cfg)


def run_tunesmith(args, train: Path, validation: Path) -> dict:
    from peft import PeftModel

    from tunesmith.models import load_model
    from tunesmith.train import recipe

    device = _device()
    step_ends = clock_recipe_steps(device)
    out = Path(tempfile.mkdtemp(prefix="bench-dpo-tunesmith-"))
    cfg = _config(args.model, train, validation, args, out)
    recipe.train(cfg, overwrite=True)
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in steps if "trained_tokens" in m]
    rate, pairs, seconds = _throughput(step_ends, [args.batch_size] * len(step_ends), args.warmup)
    result = {"pairs_per_second": rate, "timed_pairs": pairs, "timed_seconds": seconds}
    result["peak_rss_mb"] = steps[-1]["peak_rss_mb"]  # at the last step, before evaluation and export
    model = PeftModel.from_pretrained(load_model(args.model).model, out / "adapter")
    return {**result, **validation_metrics(model, cfg)}


def run_trl(name: str, args, train: Path, validation: Path) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from tunesmith.models import load_tokenizer, resolve_model_path
    from tunesmith.precision import bf16_supported

    device = _device()
    tokenizer = load_tokenizer(args.model)
    model = AutoModelForCausalLM.from_pretrained(resolve_model_path(args.model), dtype=torch.float32)
    rows = [json.loads(line) for line in train.read_text().splitlines()]
    # TRL's conversational preference form: the same chat template renders the same tokens.
    dataset = Dataset.from_list(
        [
            {
                "prompt": r["input"]["messages"],
                "chosen": r["preferred_output"],
                "rejected": r["non_preferred_output"],
            }
            for r in rows
        ]
    )
    config = DPOConfig(
        output_dir=tempfile.mkdtemp(prefix="bench-dpo-trl-"),
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=LR,
        beta=BETA,
        lr_scheduler_type="cosine",
        warmup_steps=min(3, args.steps),
        max_grad_norm=1.0,
        max_length=2 * args.max_len,  # prompt + answer; every pair fits, so nothing is cut
        bf16=bf16_supported(device),
        use_cpu=device.type == "cpu",
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        logging_steps=args.steps,
        disable_tqdm=True,
        seed=0,
        **TRL_OPTIONS[name],
    )
    peft = LoraConfig(
        task_type="CAUSAL_LM", r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=0.0, target_modules="all-linear"
    )
    step_ends: list[float] = []

    class StepClock(TrainerCallback):
        def on_step_end(self, *a, **kw):
            _sync(device)
            step_ends.append(time.perf_counter())

    trainer = DPOTrainer(
        model=model,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft,
        callbacks=[StepClock()],
    )
    trainer.train()
    rate, pairs, seconds = _throughput(step_ends, [args.batch_size] * len(step_ends), args.warmup)
    result = {"pairs_per_second": rate, "timed_pairs": pairs, "timed_seconds": seconds, "peak_rss_mb": _peak_rss_mb()}
    trained = trainer.model
    if trained.is_gradient_checkpointing:
        trained.gradient_checkpointing_disable()
    cfg = _config(args.model, train, validation, args, Path(tempfile.mkdtemp()))
    return {**result, **validation_metrics(trained, cfg)}


def worker(name: str, args) -> None:
    folder = Path(args.data_dir)
    train, validation = folder / "train.jsonl", folder / "validation.jsonl"
    result = run_tunesmith(args, train, validation) if name == "tunesmith" else run_trl(name, args, train, validation)
    print(json.dumps({"name": name, **result}), flush=True)


def run_in_subprocess(name: str, args, data_dir: Path) -> dict:
    worker_args = ["--data-dir", str(data_dir)]
    worker_args += ["--steps", str(args.steps), "--warmup", str(args.warmup), "--model", args.model]
    worker_args += ["--max-len", str(args.max_len), "--batch-size", str(args.batch_size)]
    return run_worker(__file__, name, worker_args, REPO)


def render(results: dict[str, list[dict]], args, load: str) -> str:
    import torch

    from tunesmith.precision import compute_dtype

    median = medians(results)
    ours = median.get("tunesmith")
    lines = [
        "# DPO throughput: tunesmith vs TRL DPOTrainer",
        "",
        f"Command: `python benchmarks/dpo_throughput.py {' '.join(sys.argv[1:])}`".rstrip(),
        "",
        f"Machine: {os.cpu_count()} CPUs, flags {cpu_flags()}, torch {torch.__version__}, "
        f"compute dtype {compute_dtype('auto', _device())}; {load}.",
        f"Work: {args.model}, {args.steps} optimizer steps of {args.batch_size} HH-RLHF harmless pairs (both sides "
        f"<= {args.max_len} tokens), LoRA r=16 alpha=32 all linear layers, beta {BETA}, lr {LR}, cosine, 3 warm-up "
        f"steps. Pairs/s over steps {args.warmup + 1}..{args.steps}; medians of {args.repeats} interleaved "
        f"repeat(s), each run in a fresh process. Validation: {VALIDATION_PAIRS} held-out pairs, one function "
        "(tunesmith's DPO validation pass, float32) for every run.",
        "",
        "| run | what | pairs/s | peak RSS MB | val reward accuracy | val DPO loss | pairs/s vs tunesmith | "
        "RSS vs tunesmith |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, what in RUNS.items():
        r = median.get(name)
        if r is None:
            continue
        speed = ratio(r["pairs_per_second"], ours and ours["pairs_per_second"])
        rss = ratio(r["peak_rss_mb"], ours and ours["peak_rss_mb"])
        lines.append(
            f"| {name} | {what} | {r['pairs_per_second']:.3f} | {r['peak_rss_mb']:.0f} | "
            f"{r['val_reward_accuracy']:.3f} | {r['val_loss']:.4f} | {speed} | {rss} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker")
    parser.add_argument("--data-dir")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-len", type=int, default=160)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--only", nargs="*", choices=list(RUNS))
    parser.add_argument("--quick", action="store_true", help="3 steps, 1 warm-up step: a smoke test")
    parser.add_argument("--load", default="measured while other work shared the CPU", help="load note for the table")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.warmup = 3, 1
    if args.worker:
        return worker(args.worker, args)
    pairs = fitting_pairs(args.model, args.max_len, args.steps * args.batch_size + VALIDATION_PAIRS)
    data_dir = Path(tempfile.mkdtemp(prefix="bench-dpo-data-"))
    _write(pairs[VALIDATION_PAIRS:], data_dir, "train.jsonl")
    _write(pairs[:VALIDATION_PAIRS], data_dir, "validation.jsonl")
    results: dict[str, list[dict]] = {}
    for repeat in range(args.repeats):
        for name in args.only or RUNS:
            print(f"[{repeat + 1}/{args.repeats}] {name} ...", file=sys.stderr, flush=True)
            results.setdefault(name, []).append(run_in_subprocess(name, args, data_dir))
    table = render(results, args, args.load)
    print(table)
    if not args.quick:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(table, encoding="utf-8")


if __name__ == "__main__":
    main()
