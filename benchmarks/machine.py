"""What every benchmark table names about the machine it ran on, and the harness the tool-against-tool
benchmarks share: each run in its own process (its own peak RSS), medians of runs taken in turn."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

# The flags that decide which dtype is fast here (tunesmith.precision.bf16_supported).
SHOWN = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu_flags() -> str:
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split("flags", 1)[1].split("\n", 1)[0].split())
    except (OSError, IndexError):
        return "unknown"
    return ", ".join(f for f in SHOWN if f in flags) or "no AVX2/AVX-512"


def cpu_model() -> str:
    """The CPU's model name as /proc/cpuinfo gives it."""
    try:
        line = next(x for x in Path("/proc/cpuinfo").read_text().splitlines() if x.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown CPU"
    return line.split(":", 1)[1].strip()


def run_worker(script: str, name: str, worker_args: list[str], cwd: Path) -> dict:
    """Runs `script --worker NAME ...` in a fresh process; its result is the last JSON line it prints."""
    command = [sys.executable, script, "--worker", name, *worker_args]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-25:])
        raise SystemExit(f"{name} failed (exit {done.returncode}):\n{tail}")
    return json.loads(lines[-1])


def medians(results: dict[str, list[dict]]) -> dict[str, dict]:
    """Each run's numbers, the median over its repeats."""
    return {n: {k: statistics.median(r[k] for r in rs) for k in rs[0] if k != "name"} for n, rs in results.items()}


def ratio(value: float, ours: float | None) -> str:
    return f"{value / ours:.2f}x" if ours else "-"
