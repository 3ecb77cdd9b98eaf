"""tunesmith GRPO vs TRL's GRPOTrainer: the same prompts, model, LoRA, group size and answer length.

    python benchmarks/grpo_throughput.py                      # --steps 6 --repeats 3, every run
    python benchmarks/grpo_throughput.py --steps 1 --prompts 4 --repeats 1   # a smoke test of the harness

Work: E2E meaning representations (data/e2e_nlg/rl_train.jsonl) as chat prompts, --prompts per
optimizer step, --group answers each, every answer exactly --new-tokens long (the end-of-turn token
is suppressed in both: TRL by ``min_new_tokens``, tunesmith by masking its logit before sampling),
temperature 1, SmolLM2-135M-Instruct from tunesmith's cached HF folder (TRL loads the same folder),
float32, LoRA r=16 alpha=32 on all linear layers, beta 0.04 (both compute the reference with the
adapter disabled), one policy update per rollout, token-level loss, lr 1e-4. The reward is cheap
and the same in both (does the answer name the restaurant: tunesmith's string_check ``ilike``
against ``{{item.name}}``, a Python function for TRL), so the table measures sampling and training.

Each run is its own process and prints one JSON line: completions/s from the end of warm-up step
--warmup to the end of the last step (where TRL's on_step_end fires), and the process's peak RSS
(``ru_maxrss``) through training: for TRL when ``train()`` returns, for tunesmith at its last step
as the recipe logs it (after it tunesmith writes the merged model, which is no part of training).
With --repeats R the runs take turns R times and the table shows medians.
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
from machine import cpu_flags, cpu_model, medians, ratio, run_worker  # noqa: E402
from train_throughput import _device, _peak_rss_mb, _sync, _throughput, clock_recipe_steps  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PROMPTS = REPO / "data/e2e_nlg/rl_train.jsonl"
RESULTS = REPO / "benchmarks/results/grpo_throughput.md"
LORA = {"r": 16, "alpha": 32, "dropout": 0.0}
LR, BETA = 1e-4, 0.04

RUNS = {
    "tunesmith": "tunesmith defaults: a group shares one prefill, last-position logits, reference = adapter disabled",
    "trl-defaults": "GRPOTrainer defaults (gradient checkpointing, reference = adapter disabled)",
    "trl-no-checkpointing": "GRPOTrainer, gradient_checkpointing=False",
}
TRL_OPTIONS = {"trl-defaults": {}, "trl-no-checkpointing": {"gradient_checkpointing": False}}


def write_prompts(n: int, folder: Path) -> Path:
    """The first n E2E prompts, each with the restaurant's name as an item field for the reward."""
    rows = []
    for line in PROMPTS.read_text(encoding="utf-8").splitlines()[:n]:
        row = json.loads(line)
        rows.append({**row, "name": row["mr"].split("name[", 1)[1].split("]", 1)[0]})
    path = folder / "prompts.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _no_end_of_turn(eos_id: int):
    """tunesmith's sampler with the end-of-turn logit masked: every answer runs the whole budget."""
    import torch

    from tunesmith.train import rollout

    plain = rollout.sampler

    def sampler(sampling, device):
        pick = plain(sampling, device)
        eos = torch.tensor([eos_id], device=device)
        return lambda logits: pick(logits.index_fill(-1, eos, float("-inf")))

    rollout.sampler = sampler


def run_tunesmith(args, prompts: Path) -> dict:
    from tunesmith.config import config_from_dict
    from tunesmith.models import load_tokenizer
    from tunesmith.train import recipe

    device = _device()
    step_ends = clock_recipe_steps(device)
    _no_end_of_turn(load_tokenizer(args.model).eos_token_id)
    grader = {"type": "string_check", "name": "named", "input": "{{sample.output_text}}", "operation": "ilike"}
    out = Path(tempfile.mkdtemp(prefix="bench-grpo-tunesmith-"))
    cfg = config_from_dict(
        {
            "model": args.model,
            "data": {"train": str(prompts), "validation": str(prompts), "max_seq_len": 256},
            "method": {"name": "grpo", **LORA},
            "rl": {
                "grader": {**grader, "reference": "{{item.name}}"},
                "group_size": args.group,
                "max_new_tokens": args.new_tokens,
                "temperature": 1.0,
                "rollout_batch_size": args.prompts * args.group,
                "beta": BETA,
            },
            "train": {
                "max_steps": args.steps + args.warmup,
                "batch_size": args.prompts,
                "lr": LR,
                "warmup_steps": 0,
                "log_every": 1,
                "eval_every": 100 * (args.steps + args.warmup),
                "save_every": 100 * (args.steps + args.warmup),
                "dtype": "float32",
                "seed": 0,
            },
            "eval": {"samples": 0},
            "out_dir": str(out),
        }
    )
    recipe.train(cfg, overwrite=True)
    result = _result(step_ends, args)
    # ru_maxrss at the last training step, as the recipe logs it: not the export of the merged model after it.
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {**result, "peak_rss_mb": [m for m in logged if "peak_rss_mb" in m][-1]["peak_rss_mb"]}


def run_trl(name: str, args, prompts: Path) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from tunesmith.models import resolve_model_path

    device = _device()
    folder = resolve_model_path(args.model)  # the HF folder tunesmith loads
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    rows = [json.loads(line) for line in prompts.read_text(encoding="utf-8").splitlines()]
    # TRL's conversational form: the same chat template renders the same prompt tokens.
    dataset = Dataset.from_list([{"prompt": r["messages"], "name": r["name"]} for r in rows])

    def named(completions, name, **kwargs):
        return [float(n.lower() in c[0]["content"].lower()) for c, n in zip(completions, name, strict=True)]

    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="bench-grpo-trl-"),
        max_steps=args.steps + args.warmup,
        per_device_train_batch_size=args.prompts * args.group,  # completions: one optimizer step per rollout
        num_generations=args.group,
        max_completion_length=args.new_tokens,
        generation_kwargs={"min_new_tokens": args.new_tokens},
        temperature=1.0,
        learning_rate=LR,
        lr_scheduler_type="constant",
        beta=BETA,
        loss_type="dapo",
        bf16=False,
        use_cpu=device.type == "cpu",
        report_to="none",
        save_strategy="no",
        logging_steps=args.steps + args.warmup,
        disable_tqdm=True,
        seed=0,
        **TRL_OPTIONS[name],
    )
    peft = LoraConfig(
        task_type="CAUSAL_LM", r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=0.0, target_modules="all-linear"
    )
    step_ends: list[float] = []
    lengths: list[float] = []

    class StepClock(TrainerCallback):
        def on_step_end(self, *a, **kw):
            _sync(device)
            step_ends.append(time.perf_counter())

        def on_log(self, _args, _state, _control, logs=None, **kw):
            if logs and "completions/mean_length" in logs:
                lengths.append(logs["completions/mean_length"])

    trainer = GRPOTrainer(
        model=model,
        reward_funcs=named,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft,
        callbacks=[StepClock()],
    )
    trainer.train()
    result = _result(step_ends, args)
    if lengths and lengths[-1] != args.new_tokens:
        raise SystemExit(f"{name}: answers averaged {lengths[-1]} tokens, not {args.new_tokens}")
    return result


def _result(step_ends: list[float], args) -> dict:
    per_step = args.prompts * args.group
    rate, completions, seconds = _throughput(step_ends, [per_step] * len(step_ends), args.warmup)
    return {
        "completions_per_second": rate,
        "timed_completions": completions,
        "timed_seconds": seconds,
        "peak_rss_mb": _peak_rss_mb(),
    }


def worker(name: str, args) -> None:
    prompts = Path(args.data_dir) / "prompts.jsonl"
    result = run_tunesmith(args, prompts) if name == "tunesmith" else run_trl(name, args, prompts)
    print(json.dumps({"name": name, **result}), flush=True)


def run_in_subprocess(name: str, args, data_dir: Path) -> dict:
    worker_args = ["--data-dir", str(data_dir), "--model", args.model]
    worker_args += ["--steps", str(args.steps), "--warmup", str(args.warmup), "--prompts", str(args.prompts)]
    worker_args += ["--group", str(args.group), "--new-tokens", str(args.new_tokens)]
    return run_worker(__file__, name, worker_args, REPO)


def render(results: dict[str, list[dict]], args) -> str:
    import torch

    median = medians(results)
    ours = median.get("tunesmith")
    lines = [
        "# GRPO throughput: tunesmith vs TRL GRPOTrainer",
        "",
        f"Command: `python benchmarks/grpo_throughput.py {' '.join(sys.argv[1:])}`".rstrip(),
        "",
        f"Machine: {cpu_model()}, {os.cpu_count()} CPUs, flags {cpu_flags()}, torch {torch.__version__}, "
        f"dtype float32; {args.load}.",
        f"Work: {args.model}, {args.prompts} E2E prompts per optimizer step x {args.group} answers of exactly "
        f"{args.new_tokens} tokens (end of turn suppressed), temperature 1, LoRA r=16 alpha=32 all linear layers, "
        f"beta {BETA}, lr {LR}, token-level loss. Completions/s over steps {args.warmup + 1}.."
        f"{args.warmup + args.steps} after {args.warmup} warm-up step(s); peak RSS = the process's ru_maxrss; "
        f"medians of {args.repeats} repeat(s) taken in turn, each run in a fresh process.",
        "",
        "| run | what | completions/s | peak RSS MB | completions/s vs tunesmith | RSS vs tunesmith |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, what in RUNS.items():
        r = median.get(name)
        if r is None:
            continue
        speed = ratio(r["completions_per_second"], ours and ours["completions_per_second"])
        rss = ratio(r["peak_rss_mb"], ours and ours["peak_rss_mb"])
        lines.append(
            f"| {name} | {what} | {r['completions_per_second']:.3f} | {r['peak_rss_mb']:.0f} | {speed} | {rss} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker")
    parser.add_argument("--data-dir")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--steps", type=int, default=6, help="timed optimizer steps, after the warm-up")
    parser.add_argument("--warmup", type=int, default=1, help="untimed optimizer steps first")
    parser.add_argument("--prompts", type=int, default=8, help="prompts per optimizer step")
    parser.add_argument("--group", type=int, default=4, help="answers per prompt")
    parser.add_argument("--new-tokens", type=int, default=48, help="tokens per answer, exactly")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", nargs="*", choices=list(RUNS))
    parser.add_argument("--out", default=str(RESULTS), help="the markdown table ('-': print only)")
    parser.add_argument("--load", default="measured while other work shared the CPU", help="load note for the table")
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args)
    data_dir = Path(tempfile.mkdtemp(prefix="bench-grpo-data-"))
    write_prompts(args.prompts * (args.steps + args.warmup), data_dir)
    results: dict[str, list[dict]] = {}
    for repeat in range(args.repeats):
        for name in args.only or RUNS:
            print(f"[{repeat + 1}/{args.repeats}] {name} ...", file=sys.stderr, flush=True)
            results.setdefault(name, []).append(run_in_subprocess(name, args, data_dir))
            # Each run as it ends: an interrupted benchmark keeps what it measured.
            print(json.dumps(results[name][-1]), file=sys.stderr, flush=True)
    table = render(results, args)
    print(table)
    if args.out != "-":
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(table, encoding="utf-8")


if __name__ == "__main__":
    main()
