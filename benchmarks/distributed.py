"""Full fine-tuning of SmolLM2-135M on E2E: one process against N (FSDP2), the same global batch.

    python benchmarks/distributed.py                    # 1 vs 2 processes, 8 steps each
    python benchmarks/distributed.py --steps 4 --repeats 2

Each run is a fresh `tunesmith train` (the N-process ones through `--nproc-per-node N`), with the
machine's cores split evenly between its processes (OMP_NUM_THREADS). The global batch is the
same: 1 process x batch_size x N micro-batches, N processes x batch_size x 1. Repeats alternate
the configurations, so a change in the machine's load hits both. Per run, from metrics.jsonl:

- global tokens/s: tokens of all processes over the summed step times after --warmup steps;
- peak RSS per process (max and mean over processes) and the trained weights + AdamW state each
  process holds between steps (`state_mb`, the part FSDP2 shards, with the gradients in a step);
- the final validation loss (all 100 E2E validation examples, shared between the processes).

There is no reference-tool row: a TRL run under Accelerate's FSDP on CPU/gloo is not set up here.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from machine import cpu_flags

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks/results/distributed.md"


def config(model: str, out_dir: Path, procs: int, most: int, steps: int, batch_size: int, checkpointing: bool) -> dict:
    return {
        "model": model,
        "data": {
            "train": str(REPO / "data/e2e_nlg/train.jsonl"),
            "validation": str(REPO / "data/e2e_nlg/validation.jsonl"),
            "max_seq_len": 256,
        },
        "method": {"name": "full"},
        "train": {
            "max_steps": steps,
            "batch_size": batch_size,
            "grad_accum": most // procs,
            "lr": 5e-5,
            "warmup_steps": 2,
            "eval_every": steps,
            "save_every": steps + 1,
            "log_every": 1,
            "seed": 0,
            "gradient_checkpointing": checkpointing,
        },
        "eval": {"samples": 0},
        "out_dir": str(out_dir),
    }


def run(args, procs: int, folder: Path) -> dict:
    out = folder / f"p{procs}-{time.monotonic_ns()}"
    path = out.with_suffix(".yaml")
    path.write_text(
        yaml.safe_dump(
            config(args.model, out, procs, args.procs, args.steps, args.batch_size, args.gradient_checkpointing)
        )
    )
    threads = max(1, (os.cpu_count() or 1) // procs)
    command = [sys.executable, "-m", "tunesmith", "train", str(path), "--overwrite", f"--nproc-per-node={procs}"]
    started = time.perf_counter()
    done = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": str(threads)}, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{procs} processes failed:\n{done.stderr[-3000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    step_rows = [r for r in rows if "train_loss" in r]  # log_every 1: one line, one step
    # Each line's rate covers its own step: its tokens over its rate is that step's time.
    timed = [
        (b["trained_tokens"] - a["trained_tokens"], b["tokens_per_second"])
        for a, b in zip(step_rows, step_rows[1:], strict=False)
    ]
    timed = timed[max(0, args.warmup - 1) :]
    tokens, seconds = sum(t for t, _ in timed), sum(t / rate for t, rate in timed)
    last = rows[-1]
    return {
        "procs": procs,
        "threads_per_proc": threads,
        "tokens_per_second": tokens / seconds if seconds else 0.0,
        "peak_rss_mb": last["peak_rss_mb"],
        "peak_rss_mb_mean": last.get("peak_rss_mb_mean", last["peak_rss_mb"]),
        "state_mb": last.get("state_mb"),
        "val_loss": last["val_loss"],
        "wall_seconds": round(time.perf_counter() - started, 1),
    }


def device() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name()} (NCCL)"
    return f"CPU: {os.cpu_count()} cores ({cpu_flags()}), gloo"


def render(results: list[dict], args) -> str:
    by = {p: [r for r in results if r["procs"] == p] for p in (1, args.procs)}
    med = {p: {k: statistics.median(r[k] for r in rows) for k in rows[0] if k != "procs"} for p, rows in by.items()}
    one, many = med[1], med[args.procs]
    lines = [
        f"# Full fine-tuning, 1 vs {args.procs} processes (FSDP2)",
        "",
        f"`python benchmarks/distributed.py --steps {args.steps} --repeats {args.repeats}"
        f"{' --gradient-checkpointing' if args.gradient_checkpointing else ''}`: {args.model}, "
        f"E2E train, global batch {args.batch_size * args.procs} examples, {args.steps} steps "
        f"(throughput after {args.warmup}), median of {args.repeats} alternating runs. "
        f"{device()}; dtype: auto (bf16 autocast on GPUs and CPUs with avx512_bf16/AMX, else float32). "
        f"{args.note}",
        "",
        f"| | 1 process | {args.procs} processes | ratio |",
        "|---|---:|---:|---:|",
    ]
    for key, label in (
        ("tokens_per_second", "global tokens/s"),
        ("peak_rss_mb", "peak RSS per process, max (MB)"),
        ("peak_rss_mb_mean", "peak RSS per process, mean (MB)"),
        ("state_mb", "trained weights + AdamW state per process (MiB)"),
        ("val_loss", "final validation loss"),
        ("wall_seconds", "wall time of the command (s)"),
    ):
        ratio = many[key] / one[key] if one[key] else float("nan")
        lines.append(f"| {label} | {one[key]:,.4g} | {many[key]:,.4g} | {ratio:.2f}x |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct", help="built-in name or HF folder")
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4, help="per process; one process accumulates --procs")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="train.gradient_checkpointing on both sides: activations recomputed per layer, so the state "
        "FSDP2 shards is most of a process's memory",
    )
    parser.add_argument("--note", default="", help="a sentence for the table, e.g. the load on the machine")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="tunesmith-dist-") as tmp:
        for _ in range(args.repeats):
            for procs in (1, args.procs):
                results.append(run(args, procs, Path(tmp)))
                print(json.dumps(results[-1]), flush=True)
    table = render(results, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    print(table)


if __name__ == "__main__":
    main()
