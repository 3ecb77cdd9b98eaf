"""tunesmith's contrastive encoder training vs sentence-transformers' SentenceTransformerTrainer.

    python benchmarks/encoder_throughput.py                    # 20 steps x 32 pairs, 1 repeat
    python benchmarks/encoder_throughput.py --repeats 3        # runs alternate: t, st, t, st, ...
    python benchmarks/encoder_throughput.py --quick            # 3-step smoke test of the harness

Same work on both sides: all-MiniLM-L6-v2 (built-in `minilm-l6`), full fine-tuning, the first
steps x 32 (TLDR, abstract) pairs of data/scitldr's training split, inputs truncated to 128 tokens,
MultipleNegativesRankingLoss (cosine x 20, in-batch negatives), AdamW lr 8e-5, 4 warm-up steps then
cosine decay, float32. Each run is its own process (its own peak RSS). Four runs: each tool with its
defaults (tunesmith: `encoder.dropout: 0`, which lets BERT train on packed batches;
sentence-transformers: the checkpoint's dropout 0.1), and each with the other's dropout, so that the
table shows what the dropout setting is worth and what the rest is worth. Throughput = pairs over the
wall time from the end of warm-up step W (--warmup, default 3) to the end of the last step, timed
at the end of each optimizer step on both sides. Quality = nDCG@10 of the trained weights, one
function for both, on the first 200 test TLDRs against the 618 test abstracts.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

from machine import cpu_flags

REPO = Path(__file__).resolve().parents[1]
SCITLDR = REPO / "data/scitldr"
RESULTS = REPO / "benchmarks/results/encoder_throughput.md"
BATCH, MAX_LEN, LR, WARMUP_STEPS, SCALE = 32, 128, 8e-5, 4, 20.0
EVAL_QUERIES = 200


def _pairs(steps: int) -> list[tuple[str, str]]:
    from tunesmith.encoders.data import read_beir

    return [(p.query, p.positive) for p in read_beir(str(SCITLDR), "train").pairs()[: steps * BATCH]]


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _throughput(step_ends: list[float], warmup: int) -> float:
    timed = step_ends[warmup - 1 :]
    return (len(timed) - 1) * BATCH / (timed[-1] - timed[0])


def quality(folder: str) -> float:
    """nDCG@10 (percent) of an exported encoder folder; the same code scores both trainers' weights."""

    from tunesmith.encoders.data import read_beir
    from tunesmith.encoders.model import load_encoder
    from tunesmith.evaluate.retrieval_metrics import rank, retrieval_stats

    test = read_beir(str(SCITLDR), "test")
    docs = sorted({d for q in test.query_ids for d in test.qrels[q]})
    text = dict(zip(test.corpus_ids, test.corpus, strict=True))
    encoder = load_encoder(folder)
    corpus = encoder.encode([text[d] for d in docs])
    queries = encoder.encode(test.queries[:EVAL_QUERIES])
    relevant = [{docs.index(d): g for d, g in test.qrels[q].items()} for q in test.query_ids[:EVAL_QUERIES]]
    return retrieval_stats(rank(queries @ corpus.T), relevant)["ndcg@10"].score()


def run_tunesmith(args, out: Path, dropout: float | None = 0.0) -> dict:
    from tunesmith.config import config_from_dict
    from tunesmith.encoders.recipe import train_encoder

    train = out / "pairs.jsonl"
    pairs = _pairs(args.steps)
    train.write_text("".join(json.dumps({"query": q, "positive": p}) + "\n" for q, p in pairs))
    validation = out / "validation.jsonl"
    validation.write_text("".join(json.dumps({"query": q, "positive": p}) + "\n" for q, p in pairs[:BATCH]))
    cfg = config_from_dict(
        {
            "model": "minilm-l6",
            "out_dir": str(out / "run"),
            "data": {"train": str(train), "validation": str(validation), "max_seq_len": MAX_LEN},
            "method": {"name": "full", "objective": "contrastive"},
            "encoder": {"temperature": 1 / SCALE, "dropout": dropout},
            "train": {
                "max_steps": args.steps,
                "batch_size": BATCH,
                "lr": LR,
                "warmup_steps": WARMUP_STEPS,
                "eval_every": 10_000,
                "save_every": 10_000,
                "log_every": 1,
                "dtype": "float32",
                "max_grad_norm": 1.0,  # as sentence-transformers (Trainer) clips
            },
        }
    )
    started = time.perf_counter()
    train_encoder(cfg, overwrite=True)
    wall = time.perf_counter() - started
    rows = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    # Per-step compute time from the logged pairs/s (validation and saving excluded, as on the other side).
    seconds = [BATCH / r["examples_per_second"] for r in rows if "examples_per_second" in r]
    ends = [sum(seconds[: i + 1]) for i in range(len(seconds))]
    return {"pairs_per_second": _throughput(ends, args.warmup), "wall_seconds": wall, "folder": str(out / "run/merged")}


def run_st(args, out: Path, dropout: float | None = None) -> dict:
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments
    from transformers import TrainerCallback

    from tunesmith.encoders.model import set_dropout
    from tunesmith.models import MINILM_L6, resolve_model_path

    pairs = _pairs(args.steps)
    model = SentenceTransformer(resolve_model_path(MINILM_L6), device="cpu")
    model.max_seq_length = MAX_LEN
    if dropout is not None:
        set_dropout(model[0].auto_model, dropout)
    dataset = Dataset.from_dict({"anchor": [q for q, _ in pairs], "positive": [p for _, p in pairs]})
    ends: list[float] = []

    class StepClock(TrainerCallback):
        def on_step_end(self, *_, **__):
            ends.append(time.perf_counter())

    training = SentenceTransformerTrainingArguments(
        output_dir=str(out / "st"),
        per_device_train_batch_size=BATCH,
        max_steps=args.steps,
        learning_rate=LR,
        warmup_steps=WARMUP_STEPS,
        lr_scheduler_type="cosine",
        max_grad_norm=1.0,
        save_strategy="no",
        report_to="none",
        logging_steps=10_000,
        seed=0,
        use_cpu=True,
        dataloader_drop_last=True,
    )
    trainer = SentenceTransformerTrainer(
        model=model,
        args=training,
        train_dataset=dataset,
        loss=MultipleNegativesRankingLoss(model, scale=SCALE),
        callbacks=[StepClock()],
    )
    started = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - started
    model.save(str(out / "st-model"))
    return {"pairs_per_second": _throughput(ends, args.warmup), "wall_seconds": wall, "folder": str(out / "st-model")}


WORKERS = {
    "tunesmith": run_tunesmith,
    "tunesmith, dropout 0.1": partial(run_tunesmith, dropout=None),
    "sentence-transformers": run_st,
    "sentence-transformers, dropout 0": partial(run_st, dropout=0.0),
}


def worker(name: str, args) -> None:
    with tempfile.TemporaryDirectory(prefix="encoder-bench-") as tmp:
        result = WORKERS[name](args, Path(tmp))
        result["peak_rss_mb"] = _peak_rss_mb()  # training's peak: quality() below loads another copy
        result["ndcg@10"] = quality(result.pop("folder"))
    print("RESULT " + json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="3 steps, 1 warm-up step")
    parser.add_argument("--worker", choices=list(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--note", default="", help="what else ran on the machine (printed under the table)")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.warmup = 3, 1
    if args.worker:
        worker(args.worker, args)
        return
    results: dict[str, list[dict]] = {name: [] for name in WORKERS}
    for repeat in range(args.repeats):
        for name in WORKERS:  # alternate, so load from elsewhere falls on both sides alike
            command = [
                sys.executable,
                __file__,
                "--worker",
                name,
                "--steps",
                str(args.steps),
                "--warmup",
                str(args.warmup),
            ]
            out = subprocess.run(command, capture_output=True, text=True)
            line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                sys.exit(f"{name} (repeat {repeat + 1}) failed:\n{out.stderr[-3000:]}")
            results[name].append(json.loads(line[len("RESULT ") :]))
            print(f"{name} run {repeat + 1}: {results[name][-1]}", file=sys.stderr, flush=True)

    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r in results[name])

    lines = [
        f"# Contrastive encoder training: tunesmith vs SentenceTransformerTrainer ({args.steps} steps x {BATCH} pairs)",
        "",
        f"Command: `{shlex.join(['python', 'benchmarks/encoder_throughput.py', *sys.argv[1:]])}`",
        "",
        f"CPU: {platform.machine()}, {cpu_flags()}; float32; medians of {args.repeats} alternating run(s).",
        "",
        "| trainer | pairs/s | peak RSS (MB) | nDCG@10 (200 test queries) | wall (s) |",
        "|---|---|---|---|---|",
    ]
    for name in WORKERS:
        lines.append(
            f"| {name} | {median(name, 'pairs_per_second'):.2f} | {median(name, 'peak_rss_mb'):.0f} | "
            f"{median(name, 'ndcg@10'):.1f} | {median(name, 'wall_seconds'):.0f} |"
        )
    lines.append("")
    for ours, theirs in (("tunesmith", "sentence-transformers"), ("tunesmith", "sentence-transformers, dropout 0")):
        speed = median(ours, "pairs_per_second") / median(theirs, "pairs_per_second")
        memory = median(ours, "peak_rss_mb") / median(theirs, "peak_rss_mb")
        lines.append(f"- {ours} / {theirs}: pairs/s {speed:.2f}x, peak RSS {memory:.2f}x.")
    if args.note:
        lines += ["", args.note]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.quick:
        RESULTS.write_text(text)
        (RESULTS.with_suffix(".json")).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
