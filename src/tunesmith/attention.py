"""Attention for packed micro-batches: every example attends only to itself, with no mask.

A packed micro-batch is a single row holding all its examples back to back, so the projections
and MLPs, nearly all of the compute, run on real tokens only. Attention alone is done per example:
queries, keys and values are gathered into an [examples, longest, ...] layout padded on the right,
where plain causal attention is exact for every real position (it never sees the padding after it),
so no [tokens, tokens] block mask is built. The padding costs attention FLOPs only, well under 1% of
the model's for fine-tuning-sized examples. On CUDA the causal attention is SDPA's flash kernel; on
CPU it is a matmul version that recomputes its probabilities in backward (measured ~2x faster than
SDPA's CPU flash kernel at these lengths, and like it, it keeps no [longest, longest] matrices).

Models loaded by tunesmith use this implementation; without segments it is transformers' SDPA.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "tunesmith_packed"


@dataclass(frozen=True)
class Segments:
    """Where each example of a packed row lives."""

    scatter: torch.Tensor  # [tokens]: where each row token goes in the flattened [examples, longest]
    shape: tuple[int, int]  # (examples, longest)


def segments(lengths: list[int], device: torch.device) -> Segments:
    # Rounded up, as batch rows are (batching.ROW_MULTIPLE): fewer distinct shapes to build kernels for.
    longest = -(-max(lengths) // 16) * 16
    offsets = torch.arange(longest)
    real = offsets < torch.tensor(lengths)[:, None]
    scatter = (torch.arange(len(lengths))[:, None] * longest + offsets)[real]
    return Segments(scatter.to(device), (len(lengths), longest))


class _CausalAttention(torch.autograd.Function):
    """softmax(scaling * q k^T + causal mask) v per example, saving no probabilities.

    Shapes: query [examples, kv_heads, groups * longest, dim], key and value [examples, kv_heads,
    longest, dim]. The query heads that share a key/value head are stacked along the rows, so keys
    and values are never repeated. Backward recomputes the probabilities, as flash attention does:
    keeping them would cost every layer [examples, heads, longest, longest] floats.
    """

    @staticmethod
    def _probs(query, key, scaling: float) -> torch.Tensor:
        examples, kv_heads, rows, dim = query.shape
        longest = key.shape[2]
        future = torch.full((longest, longest), float("-inf"), dtype=query.dtype, device=query.device).triu(1)
        # One fused kernel for scaling * q k^T + mask, over [examples * kv_heads] matrices.
        scores = torch.baddbmm(
            future.repeat(rows // longest, 1),
            query.reshape(-1, rows, dim),
            key.reshape(-1, longest, dim).transpose(1, 2),
            alpha=scaling,
        )
        return scores.softmax(-1, dtype=torch.float32).view(examples, kv_heads, rows, longest)

    @staticmethod
    def forward(ctx, query, key, value, scaling: float):
        ctx.save_for_backward(query, key, value)
        ctx.scaling = scaling
        return _CausalAttention._probs(query, key, scaling).to(value.dtype) @ value

    @staticmethod
    def backward(ctx, grad_out):
        query, key, value = ctx.saved_tensors
        probs = _CausalAttention._probs(query, key, ctx.scaling)
        grad_value = probs.to(value.dtype).transpose(-1, -2) @ grad_out
        grad_scores = (grad_out @ value.transpose(-1, -2)).float()
        row_dot = (grad_scores * probs).sum(-1, keepdim=True)
        grad_scores = grad_scores.sub_(row_dot).mul_(probs).mul_(ctx.scaling).to(query.dtype)
        return grad_scores @ key, grad_scores.transpose(-1, -2) @ query, grad_value, None


def causal_attention(query, key, value, scaling: float, fused: bool | None = None) -> torch.Tensor:
    """Shapes as in _CausalAttention. `fused` (default: on CUDA) takes SDPA's flash kernels, which
    on this project's CPU were ~2x slower than the matmul version for fine-tuning lengths."""
    if fused is None:
        fused = query.device.type == "cuda"
    if fused:
        examples, kv_heads, rows, dim = query.shape
        longest = key.shape[2]
        # The stacked rows are the query heads in transformers' order (head h reads kv head h // groups).
        heads = query.view(examples, kv_heads * (rows // longest), longest, dim)
        out = F.scaled_dot_product_attention(heads, key, value, is_causal=True, scale=scaling, enable_gqa=True)
        return out.view(examples, kv_heads, rows, dim)
    return _CausalAttention.apply(query, key, value, scaling)


def packed_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    segments: Segments | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    if segments is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    if query.shape[0] != 1 or dropout:
        raise ValueError("packed attention takes one row of examples and no attention dropout")
    examples, longest = segments.shape
    heads, kv_heads, dim = query.shape[1], key.shape[1], query.shape[3]
    groups = heads // kv_heads

    # Under autocast the rotary embedding hands back float32 queries and keys (its cos/sin are
    # float32); attention runs in the autocast dtype like the projections around it.
    device = query.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else query.dtype

    def by_example(states: torch.Tensor) -> torch.Tensor:
        """[1, h, tokens, dim] -> [examples, kv_heads, h // kv_heads * longest, dim], zero-padded."""
        h = states.shape[1]
        rows = states[0].transpose(0, 1).to(dtype)  # [tokens, h, dim]: the layout the projections wrote
        padded = rows.new_zeros(examples * longest, h, dim).index_copy(0, segments.scatter, rows)
        padded = padded.view(examples, longest, kv_heads, h // kv_heads, dim).permute(0, 2, 3, 1, 4)
        return padded.reshape(examples, kv_heads, h // kv_heads * longest, dim)

    scaling = scaling if scaling is not None else dim**-0.5
    out = causal_attention(by_example(query), by_example(key), by_example(value), scaling)
    out = out.view(examples, kv_heads, groups, longest, dim).permute(0, 3, 1, 2, 4)
    return out.reshape(examples * longest, heads, dim).index_select(0, segments.scatter).unsqueeze(0), None


AttentionInterface.register(NAME, packed_attention)
# Outside packed batches (generation, padded batches) the masks are SDPA's.
AttentionMaskInterface.register(NAME, sdpa_mask)
