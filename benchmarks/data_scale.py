"""Data at scale: validation + tokenisation of N chat examples, against TRL's SFTTrainer preparation.

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python benchmarks/data_scale.py --n 100000 1000000 --trl-n 100000

Builds N synthetic chat examples by recombining the shipped E2E data (a prompt of one line with the
reference of another; ~104 tokens each with SmolLM2's template), then measures, each in a fresh
process: tunesmith's validation + tokenisation into the token store (wall time, examples/s, peak
RSS of the process and its workers together, store size), the time from `tunesmith train` start to
its first optimizer step on a cache hit (median of three, and the imports alone beside it; tiny
test model, so the time is the data path's, not the model's), and TRL's SFTTrainer dataset preparation
(datasets.map with the same number of processes)
on the same examples in TRL's conversational prompt/completion format, loading the JSON included.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from machine import cpu_flags

REPO = Path(__file__).resolve().parents[1]


def write_data(folder: Path, n: int) -> tuple[Path, Path]:
    """The same n examples as tunesmith messages JSONL and as TRL conversational prompt/completion."""
    rows = [json.loads(line) for line in (REPO / "data/e2e_nlg/train.jsonl").read_text().splitlines()]
    ours, theirs = folder / f"chat_{n}.jsonl", folder / f"trl_{n}.jsonl"
    with open(ours, "w") as a, open(theirs, "w") as b:
        for k in range(n):
            prompt = rows[k % len(rows)]["prompt"]
            completion = rows[(k // len(rows) + k) % len(rows)]["completion"]
            user, assistant = {"role": "user", "content": prompt}, {"role": "assistant", "content": completion}
            a.write(json.dumps({"messages": [user, assistant]}) + "\n")
            b.write(json.dumps({"prompt": [user], "completion": [assistant]}) + "\n")
    return ours, theirs


def _tree_rss(pid: int) -> int:
    import psutil

    try:
        root = psutil.Process(pid)
        return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
    except psutil.Error:
        return 0


def measure(args: list[str], env: dict) -> dict:
    """Run this script's `args` mode in a fresh process; its JSON answer plus wall time and peak tree RSS."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, env={**os.environ, **env})
    peak = 0

    def sample():
        nonlocal peak
        while proc.poll() is None:
            peak = max(peak, _tree_rss(proc.pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    out, _ = proc.communicate()
    sampler.join()
    if proc.returncode:
        raise SystemExit(f"{args[0]} failed with exit status {proc.returncode}")
    result = json.loads(out.decode().strip().splitlines()[-1])
    return {**result, "process_seconds": time.perf_counter() - start, "peak_rss_mb": peak / 2**20}


def _tunesmith_prepare(path: str, validation: str, workers: int) -> None:
    from tunesmith.config import DataConfig
    from tunesmith.data.prepare import prepare_data
    from tunesmith.data.store import store_root
    from tunesmith.models import DEFAULT_MODEL, load_tokenizer

    tokenizer = load_tokenizer(DEFAULT_MODEL)
    cfg = DataConfig(train=path, validation=validation, max_seq_len=256, num_workers=workers)
    start = time.perf_counter()
    data = prepare_data(cfg, tokenizer)
    seconds = time.perf_counter() - start
    size = sum(f.stat().st_size for f in store_root().rglob("*") if f.is_file())
    start = time.perf_counter()
    prepare_data(cfg, tokenizer)  # a cache hit: hash the files, map and check the store, split, report
    hit = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "hit_seconds": hit, "examples": len(data.train), "store_mb": size / 2**20}))


def _tunesmith_first_step(path: str, validation: str, out_dir: str) -> None:
    """`tunesmith train` in this process, stopped at its first optimizer step (time since process start)."""
    import psutil

    started = psutil.Process().create_time()
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from tunesmith.cli import main

    def first_step(optimizer, args, kwargs):
        print(json.dumps({"seconds": time.time() - started}), flush=True)
        os._exit(0)

    register_optimizer_step_post_hook(first_step)
    config = Path(out_dir) / "config.yaml"
    config.write_text(
        "model: tiny-llama-test\n"
        f"data: {{train: {path}, validation: {validation}, max_seq_len: 256}}\n"
        "train: {max_steps: 1, batch_size: 8, dtype: float32}\n"
        "eval: {samples: 0}\n"
        f"out_dir: {out_dir}/run\n"
    )
    main(["train", str(config), "--overwrite"])


def _imports() -> None:
    """What `tunesmith train` imports before it reads its config (time since process start)."""
    import psutil

    started = psutil.Process().create_time()
    import tunesmith.cli
    import tunesmith.train.recipe  # noqa: F401

    print(json.dumps({"seconds": time.time() - started}))


def _trl_prepare(path: str, workers: int) -> None:
    import datasets
    from trl import SFTConfig, SFTTrainer

    from tunesmith.models import DEFAULT_MODEL, TINY_TEST_MODEL, load_model, load_tokenizer

    tokenizer = load_tokenizer(DEFAULT_MODEL)
    model = load_model(TINY_TEST_MODEL).model
    user, assistant = {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}
    small = datasets.Dataset.from_list([{"prompt": [user], "completion": [assistant]}])
    args = SFTConfig(
        output_dir=tempfile.mkdtemp(), dataset_num_proc=workers, max_length=256, report_to=[], use_cpu=True, bf16=False
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=small, processing_class=tokenizer)
    start = time.perf_counter()
    dataset = datasets.load_dataset("json", data_files=path, split="train")
    loaded = time.perf_counter()
    prepared = trainer._prepare_dataset(dataset, tokenizer, args, False, None, "train")
    done = time.perf_counter()
    print(json.dumps({"seconds": done - start, "load_seconds": loaded - start, "examples": len(prepared)}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--trl-n", type=int, nargs="*", default=None, help="sizes TRL runs at (default: --n)")
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--work", default=None, help="folder for the data files and caches (default: a temp one)")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="tunesmith-data-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    # A small validation file: the first step comes after one evaluation, which should not be what is timed.
    validation = work / "validation.jsonl"
    validation.write_text("".join((REPO / "data/e2e_nlg/validation.jsonl").read_text().splitlines(True)[:16]))
    validation = str(validation)
    trl_sizes = args.n if args.trl_n is None else args.trl_n
    rows = []
    for n in args.n:
        ours, theirs = write_data(work, n)
        home = {"TUNESMITH_HOME": str(work / f"home_{n}")}
        # The tiny model's cached folder is built outside the timed runs.
        measure(["_first_step", validation, validation, str(work)], home)
        shutil.rmtree(work / f"home_{n}" / "cache" / "store", ignore_errors=True)  # a cold start
        cold = measure(["_prepare", str(ours), validation, str(args.workers)], home)
        # This machine's speed drifts by ~20% over minutes: medians of three fresh processes, and the
        # imports alone (torch and transformers' Llama, which any trainer pays) measured beside them.
        first = statistics.median(
            measure(["_first_step", str(ours), validation, str(work)], home)["seconds"] for _ in range(3)
        )
        imports = statistics.median(measure(["_imports"], {})["seconds"] for _ in range(3))
        row = {
            "n": n,
            "tunesmith_seconds": cold["seconds"],
            "tunesmith_rate": n / cold["seconds"],
            "tunesmith_rss_mb": cold["peak_rss_mb"],
            "store_mb": cold["store_mb"],
            "hit_s": cold["hit_seconds"],
            "first_step_s": first,
            "imports_s": imports,
        }
        if n in trl_sizes:
            trl = measure(["_trl", str(theirs), str(args.workers)], {"HF_DATASETS_CACHE": str(work / f"hf_{n}")})
            row |= {"trl_seconds": trl["seconds"], "trl_rate": n / trl["seconds"], "trl_rss_mb": trl["peak_rss_mb"]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    load = os.getloadavg()
    print(
        f"\nCPU: {platform.machine()}, {os.cpu_count()} cores, flags: {cpu_flags()}; token ids uint16, "
        f"{args.workers} worker processes; load average during the run {load[0]:.1f}, {load[1]:.1f}, {load[2]:.1f}\n"
    )
    print(
        "| examples | tunesmith validate + tokenize | examples/s | peak RSS (with workers) | store on disk "
        "| prepare_data, cache hit | `tunesmith train` to first step, cache hit (of which imports) "
        "| TRL SFTTrainer prep | TRL examples/s | TRL peak RSS |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        trl = (
            f"{r['trl_seconds']:.0f} s | {r['trl_rate']:,.0f} | {r['trl_rss_mb']:,.0f} MB"
            if "trl_seconds" in r
            else "not run | | "
        )
        print(
            f"| {r['n']:,} | {r['tunesmith_seconds']:.0f} s | {r['tunesmith_rate']:,.0f} | "
            f"{r['tunesmith_rss_mb']:,.0f} MB | {r['store_mb']:,.0f} MB | {r['hit_s']:.1f} s | "
            f"{r['first_step_s']:.1f} s ({r['imports_s']:.1f} s) | {trl} |"
        )


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else ""
    if mode == "_prepare":
        _tunesmith_prepare(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif mode == "_first_step":
        _tunesmith_first_step(sys.argv[2], sys.argv[3], sys.argv[4])
    elif mode == "_imports":
        _imports()
    elif mode == "_trl":
        _trl_prepare(sys.argv[2], int(sys.argv[3]))
    else:
        main()
