"""Model FLOPs per trained token, and the machine's measured matmul peak, for MFU.

MFU = `model_flops_per_second` (computed tokens/s * flops_per_token) / `PeakFlops`: a prompt prefix
shared by several examples is computed once, so it counts once.

The count is of *model* FLOPs, the useful work of one training token, whatever the implementation
does on top (gradient-checkpointing recomputation, padding, attention to masked keys are not
counted), so two trainers doing the same work are compared on the same numerator. Per token, with
a weight matrix of n = in * out entries:

  forward                        2n   (one multiply-add per entry)
  backward, activation gradient  2n   (always: something before it is trained)
  backward, weight gradient      2n   (only if the weight is trained)

so a trained matrix costs 6n (the usual 6N of full fine-tuning) and a frozen one 4n (LoRA: 4N over
the base, plus 6n over the small adapter matrices). Embedding lookups cost nothing. lm_head only
runs at labelled positions (the loss skips the others), so its term is scaled by `label_share`,
the labelled fraction of the tokens. Attention scores and the weighted sum of values add
4 * layers * (heads * head_dim) * keys forward per token (2x that backward), where `keys` is the
mean number of keys a query attends to (see `mean_attended_keys`); at E2E lengths (~100 tokens)
this is ~3% of the total for SmolLM2-135M.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from tunesmith.paths import tunesmith_home

PEAK_CACHE = "peak_flops.json"


def _base(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def mean_attended_keys(lengths) -> float:
    """Mean keys per query under causal attention within each example (a token at position p sees p+1)."""
    n = np.asarray(lengths, dtype=np.float64)
    return float((n * (n + 1) / 2).sum() / max(n.sum(), 1))


def flops_per_token(model, label_share: float = 1.0, attended_keys: float = 0.0) -> float:
    """Training FLOPs (forward + backward) per token; see the module docstring for the formula."""
    head = _base(model).get_output_embeddings()
    total = 0.0
    for module in model.modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        entries = module.weight.numel()
        per_entry = 6 if module.weight.requires_grad else 4
        total += per_entry * entries * (label_share if module is head else 1.0)
    config = _base(model).config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    total += 3 * 4 * config.num_hidden_layers * config.num_attention_heads * head_dim * attended_keys
    return total


def model_flops_per_second(
    model, computed_tokens: float, label_tokens: float, attended_keys: float, seconds: float
) -> float:
    """The model FLOP/s of training `computed_tokens` in `seconds`: MFU's numerator.

    `computed_tokens` are the tokens the model ran: a prompt prefix that several examples share
    (a DPO pair's two answers, or what every example of a packed micro-batch begins with) runs
    once and counts once, where tokens/s counts it in every example. The labelled positions are
    the same either way (prefixes carry no labels)."""
    share = label_tokens / max(computed_tokens, 1)
    return computed_tokens * flops_per_token(model, share, attended_keys) / max(seconds, 1e-9)


# The instruction sets a CPU matmul's speed depends on: two machines sold under one model name
# ("AMD EPYC") differ by 10x in bfloat16 with and without avx512_bf16.
MATMUL_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16")


def cpu_name(cpuinfo: str) -> str:
    """The CPU's model name and the matmul instruction sets it has, from /proc/cpuinfo's text."""
    lines = cpuinfo.splitlines()
    name = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), platform.machine())
    flags = next((set(line.split(":", 1)[1].split()) for line in lines if line.startswith("flags")), set())
    return "+".join([name, *(flag for flag in MATMUL_FLAGS if flag in flags)])


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        return cpu_name(Path("/proc/cpuinfo").read_text())
    except OSError:
        return platform.processor() or platform.machine()


def _time_matmul(device: torch.device, dtype: torch.dtype, seconds: float) -> float:
    """Best FLOP/s of repeated square matmuls over about `seconds` (the best, not the mean: a peak).

    The size doubles from 256 while one product takes under a tenth of the budget: a CPU without
    bfloat16 instructions multiplies 2048-square bfloat16 matrices in a minute, not a tenth of a
    second, and the timing must stay within its budget there too."""
    largest = 8192 if device.type == "cuda" else 2048
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def product_seconds(a, b) -> float:
        start = time.perf_counter()
        a @ b
        sync()
        return time.perf_counter() - start

    n = 256
    while True:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        product_seconds(a, b)  # warm-up: kernel selection, first-touch of the output
        if n >= largest or product_seconds(a, b) >= seconds / 10:
            break
        n *= 2
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        best = min(best, product_seconds(a, b))
    return 2 * n**3 / best


def _read_cache(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


class PeakFlops:
    """This machine's matmul FLOP/s in `dtype` for one process, MFU's denominator: timed once
    (~`seconds`) and cached in $TUNESMITH_HOME/peak_flops.json under the device (with its matmul
    instruction sets), the dtype and the CPU thread count.

    A timing taken while other work shares the CPU comes out low, and every MFU after it too high.
    So the cache keeps the best timing it has seen, and work that runs faster than the cached peak
    (MFU > 1) has the matmul timed again: the peak is then at least what that work achieved."""

    def __init__(self, device: torch.device | str, dtype: torch.dtype, seconds: float = 0.5):
        self.device, self.dtype, self.seconds = torch.device(device), dtype, seconds
        self.key = f"{_device_name(self.device)}|{self.device.type}|{dtype}|threads={torch.get_num_threads()}"
        self.path = tunesmith_home() / PEAK_CACHE
        cached = _read_cache(self.path).get(self.key)
        self.value = float(cached) if cached is not None else self._measure(floor=0.0)

    def utilisation(self, flops_per_second: float) -> float:
        """MFU of work running at `flops_per_second` on this one process."""
        if flops_per_second > self.value:
            self.value = self._measure(floor=flops_per_second)
        return flops_per_second / self.value

    def _measure(self, floor: float) -> float:
        cached = _read_cache(self.path)
        peak = max(_time_matmul(self.device, self.dtype, self.seconds), floor, float(cached.get(self.key, 0.0)))
        cached[self.key] = peak
        # Write-then-rename: two runs starting together must not leave a half-written file.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"{PEAK_CACHE}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cached, indent=1))
        tmp.replace(self.path)
        return peak
