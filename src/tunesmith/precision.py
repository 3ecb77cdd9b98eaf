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


def autocast(setting: str, device: torch.device):
    dtype = compute_dtype(setting, device)
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)


def active_dtype(tensor: torch.Tensor) -> torch.dtype:
    """The dtype autocast would compute in for `tensor`'s device right now, else the tensor's own."""
    device = tensor.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else tensor.dtype


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
