"""Model FLOPs per trained token, and the machine's measured matmul peak, for MFU.

MFU = computed tokens/s * flops_per_token(...) / measured_peak_flops(...) (`mfu`): a prompt prefix
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


def mfu(model, computed_tokens: float, label_tokens: float, attended_keys: float, seconds: float, peak: float) -> float:
    """Model FLOPs utilisation: the FLOPs of `computed_tokens` over `seconds`, as a share of `peak`
    FLOP/s (all processes together).

    `computed_tokens` are the tokens the model ran: a prompt prefix that several examples share
    (a DPO pair's two answers, or what every example of a packed micro-batch begins with) runs
    once and counts once, where tokens/s counts it in every example. The labelled positions are
    the same either way (prefixes carry no labels)."""
    share = label_tokens / max(computed_tokens, 1)
    return computed_tokens * flops_per_token(model, share, attended_keys) / max(seconds, 1e-9) / peak


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _time_matmul(device: torch.device, dtype: torch.dtype, seconds: float) -> float:
    """Best FLOP/s of repeated square matmuls over about `seconds` (the best, not the mean: a peak)."""
    n = 8192 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    a @ b  # warm-up: kernel selection, first-touch of the output
    sync()
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def measured_peak_flops(device: torch.device | str, dtype: torch.dtype, seconds: float = 0.5) -> float:
    """The machine's matmul FLOP/s in `dtype`, timed once (~`seconds`) and cached in
    $TUNESMITH_HOME/peak_flops.json under the device name, dtype and CPU thread count."""
    device = torch.device(device)
    key = f"{_device_name(device)}|{device.type}|{dtype}|threads={torch.get_num_threads()}"
    path = tunesmith_home() / PEAK_CACHE
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    if key in cached:
        return float(cached[key])
    peak = _time_matmul(device, dtype, seconds)
    cached[key] = peak
    # Write-then-rename: two runs starting together must not leave a half-written file.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{PEAK_CACHE}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(cached, indent=1))
    tmp.replace(path)
    return peak
