"""Compute precision: bfloat16 autocast where the hardware runs it fast, float32 elsewhere.

Trained weights and optimizer state stay float32 either way; only matmuls run in bfloat16 (a LoRA
run stores its frozen base weights in bfloat16 while training: kernels/lean.py). On a CPU with
avx512_bf16 (or AMX) that is ~2.5x faster for SmolLM2-135M; without it bf16 is emulated and slower.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch


@functools.cache
def bf16_supported(device: torch.device) -> bool:
    # Cached: autocast() asks on every micro-batch, and the answer is a file read.
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def compute_dtype(setting: str, device: torch.device) -> torch.dtype:
    """`setting` is a config dtype: auto, float32 or bfloat16."""
    use_bf16 = setting == "bfloat16" or (setting == "auto" and bf16_supported(device))
    return torch.bfloat16 if use_bf16 else torch.float32


def slow_dtype_warning(setting: str, device: torch.device) -> str | None:
    """What to tell a user who asked for bfloat16 where the hardware only emulates it."""
    if setting != "bfloat16" or device.type != "cpu" or bf16_supported(device):
        return None
    # Measured on a 2-core AMD EPYC with AVX2 only: matmul peak 1.3 GFLOP/s in bf16, 90 in float32.
    return (
        "train.dtype is bfloat16 on a CPU without avx512_bf16 or AMX: its matmuls are emulated, "
        "tens of times slower than float32; train.dtype: auto picks float32 here"
    )


def autocast(setting: str, device: torch.device):
    dtype = compute_dtype(setting, device)
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)


def active_dtype(tensor: torch.Tensor) -> torch.dtype:
    """The dtype autocast would compute in for `tensor`'s device right now, else the tensor's own."""
    device = tensor.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else tensor.dtype


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
