"""Python graders run here: each call in a fresh process (sandboxed.py) in a fresh temporary folder.

The process starts with ``python -I -S`` (no PYTHON* variables, no user or site packages) in an
environment of its own (LC_ALL, and TMPDIR set to its folder: the server's keys and paths never
reach it), limits itself (CPU seconds, address space, file size) and installs its audit hook
before the grader's code runs; this side adds the wall-clock timeout and removes the folder
afterwards. A crash, a refused operation, a limit or a timeout is an Outcome with an error and no
score, never an exception.

A fresh process per sample costs ~0.1 s of start-up (measured on 2 busy cores), but no state (or
another organisation's item) survives from one sample to the next. grade.grade_many runs several
at once.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

PROGRAM = Path(__file__).with_name("sandboxed.py")


@dataclass(frozen=True)
class Limits:
    cpu_seconds: int = 10
    memory_bytes: int = 1 << 30
    file_bytes: int = 64 << 20  # the largest file the grader may write in its folder
    wall_seconds: float = 30.0


@dataclass(frozen=True)
class Outcome:
    score: float | None
    error: str | None = None
    kind: str | None = None  # "runtime" (the grader's code failed) | "timeout" | "server" (the sandbox failed)


def run(source: str, sample: dict, item: dict, limits: Limits = Limits()) -> Outcome:
    """``grade(sample, item)`` of ``source``, in its own process."""
    limits_json = {k: v for k, v in asdict(limits).items() if k != "wall_seconds"}
    request = json.dumps({"source": source, "sample": sample, "item": item, "limits": limits_json})
    with tempfile.TemporaryDirectory(prefix="tunesmith-grader-") as folder:
        try:
            done = subprocess.run(
                [sys.executable, "-I", "-S", str(PROGRAM)],
                input=request.encode(),
                capture_output=True,
                cwd=folder,
                env={"LC_ALL": "C.UTF-8", "TMPDIR": folder},  # tempfile writes where the grader may
                timeout=limits.wall_seconds,
            )
        except subprocess.TimeoutExpired:
            return Outcome(None, f"the grader ran past its {limits.wall_seconds:g} s wall-clock limit", "timeout")
        except OSError as error:
            return Outcome(None, f"the grader's process could not start: {error}", "server")
    lines = done.stdout.decode(errors="replace").strip().splitlines()
    if done.returncode == -signal.SIGXCPU or done.returncode == -signal.SIGKILL and not lines:
        return Outcome(None, f"the grader ran past its {limits.cpu_seconds} s CPU-time limit", "timeout")
    try:
        answer = json.loads(lines[-1])
    except (IndexError, ValueError):
        answer = None
    if isinstance(answer, dict) and isinstance(answer.get("error"), str):
        return Outcome(None, answer["error"], "runtime")
    score = answer.get("score") if isinstance(answer, dict) else None
    # The grader can write to the answer's descriptor itself: what comes back is checked like any input.
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
        tail = done.stderr.decode(errors="replace").strip()[-500:]
        return Outcome(
            None, f"the grader's process ended with status {done.returncode} and no score: {tail}", "runtime"
        )
    return Outcome(float(score))
