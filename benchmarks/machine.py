"""What every benchmark table names about the machine it ran on."""

from __future__ import annotations

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
