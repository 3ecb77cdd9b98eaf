"""What a running job shows: a progress bar for people, metrics.jsonl for plots and reports."""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Iterator, Sequence

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn, track


def peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class TrainProgress:
    def __init__(self, total_steps: int, done: int, show: bool = True):
        """`show=False`: silent (the processes of a distributed run other than rank 0)."""
        self.show = show
        self.console = Console(stderr=True)
        self.bar = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  lr {task.fields[lr]}  {task.fields[rate]} tok/s"),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            disable=not (show and sys.stderr.isatty()),
        )
        self.task = self.bar.add_task("train", total=total_steps, completed=done, loss="-", lr="-", rate="-")

    def __enter__(self):
        self.bar.start()
        return self

    def __exit__(self, *exc):
        self.bar.stop()

    def advance(self, step: int, loss: float | None = None, lr: float | None = None, rate: float | None = None):
        fields = {}
        if loss is not None:
            fields = {"loss": f"{loss:.4f}", "lr": f"{lr:.2e}", "rate": f"{rate:,.0f}"}
        self.bar.update(self.task, completed=step, **fields)

    def say(self, text: str) -> None:
        """A line that stays (evaluations, checkpoints); plain stderr when not on a terminal."""
        if not self.show:
            return
        if self.bar.disable:
            print(text, file=sys.stderr, flush=True)
        else:
            self.bar.console.print(text, markup=False, highlight=False)


def tracked(items: Sequence, description: str) -> Iterator:
    """A progress bar with ETA over batches of work; off a terminal, a start and an end line."""
    if sys.stderr.isatty():
        yield from track(items, description=description, console=Console(stderr=True), transient=True)
        return
    start = time.perf_counter()
    print(f"{description}: {len(items)} batches", file=sys.stderr, flush=True)
    yield from items
    print(f"{description}: done in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)


class WorkProgress:
    """A bar over bytes of input with examples/s and ETA; off a terminal, a start and an end line."""

    def __init__(self, description: str, total_bytes: int):
        self.description, self.examples = description, 0
        self.console = Console(stderr=True)
        self.bar = Progress(
            TextColumn(f"[bold]{description}"),
            BarColumn(),
            TextColumn("{task.fields[examples]} examples  {task.fields[rate]} examples/s  ETA"),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
            disable=not sys.stderr.isatty(),
        )
        self.task = self.bar.add_task(description, total=max(total_bytes, 1), examples="0", rate="-")

    def __enter__(self):
        self.start = time.perf_counter()
        if self.bar.disable:
            print(f"{self.description}: started", file=sys.stderr, flush=True)
        self.bar.start()
        return self

    def update(self, done_bytes: int, examples: int) -> None:
        self.examples = examples
        rate = examples / max(time.perf_counter() - self.start, 1e-9)
        self.bar.update(self.task, completed=done_bytes, examples=f"{examples:,}", rate=f"{rate:,.0f}")

    def __exit__(self, *exc):
        self.bar.stop()
        seconds = time.perf_counter() - self.start
        if exc[0] is None:
            rate = self.examples / max(seconds, 1e-9)
            print(
                f"{self.description}: {self.examples:,} examples in {seconds:.1f} s ({rate:,.0f} examples/s)",
                file=sys.stderr,
                flush=True,
            )
