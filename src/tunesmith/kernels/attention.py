"""Attention for packed micro-batches: every example attends only to itself.

A packed micro-batch is a single row holding all its examples back to back, so the projections
and MLPs, nearly all of the compute, run on real tokens only. Attention alone is done per example:
queries, keys and values are gathered into an [examples, longest, ...] layout padded on the right,
where plain causal attention is exact for every real position (it never sees the padding after it),
so no [tokens, tokens] block mask is built. Encoders attend both ways: there a mask of
[examples, longest] hides each example's padding keys, still nothing of [tokens, tokens] size. The
padding costs attention FLOPs only, well under 1% of the model's for fine-tuning-sized examples.
Three kernels compute it (`segment_attention` picks one): SDPA (flash) on CUDA and for encoders;
for causal attention on CPU, the CPU flash kernel in float32, and in bf16 a matmul version that
recomputes its probabilities in backward (measured ~2x faster than SDPA's CPU flash kernel in bf16
at these lengths). Neither causal CPU kernel keeps [longest, longest] matrices, and both save only
the packed rows.

Models loaded by tunesmith use this implementation; without segments it is transformers' SDPA.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from tunesmith.precision import active_dtype

NAME = "tunesmith_packed"


@dataclass(frozen=True)
class Segments:
    """Where each example of a packed row lives."""

    scatter: torch.Tensor  # [tokens]: the slot of the flattened [examples, longest] whose output a row token takes
    gather: torch.Tensor  # [examples * longest]: the row token each slot holds (padding: any token)
    shape: tuple[int, int]  # (examples, longest)
    # Bidirectional attention (encoders): [examples, 1, longest], 0 at real keys and -inf at padding.
    # None: causal, where the padding after an example is never seen anyway.
    key_mask: torch.Tensor | None = None
    # Shared prefixes only: (the real slots, the row token of each): a token held by several slots
    # takes its gradient from all of them.
    copies: tuple[torch.Tensor, torch.Tensor] | None = None


def segments(
    lengths: list[int], device: torch.device, causal: bool = True, parents: list[int] | None = None
) -> Segments:
    """The layout of a packed row of segments with these lengths. `parents[i]` >= 0: segment i
    continues that earlier segment (a shared prompt, DPO), so its example is the parent's tokens
    and then its own; a segment with children is no example of its own (its outputs are taken
    from its first child's)."""
    if parents is not None and any(p >= 0 for p in parents):
        if not causal:  # a shared prefix would attend to the tokens of every example after it
            raise ValueError("shared prefixes are for causal attention only")
        return _shared_segments(lengths, parents, device)
    # Rounded up, as batch rows are (batching.ROW_MULTIPLE): fewer distinct shapes to build kernels for.
    longest = -(-max(lengths) // 16) * 16
    offsets = torch.arange(longest)
    real = offsets < torch.tensor(lengths)[:, None]
    scatter = (torch.arange(len(lengths))[:, None] * longest + offsets)[real]
    gather = torch.zeros(len(lengths) * longest, dtype=torch.long)
    gather[scatter] = torch.arange(len(scatter))
    key_mask = None if causal else torch.zeros(real.shape).masked_fill_(~real, float("-inf"))[:, None].to(device)
    return Segments(scatter.to(device), gather.to(device), (len(lengths), longest), key_mask)


def _shared_segments(lengths: list[int], parents: list[int], device: torch.device) -> Segments:
    starts = torch.tensor([0, *lengths]).cumsum(0).tolist()
    own = [torch.arange(starts[i], starts[i + 1]) for i in range(len(lengths))]
    examples = []
    for i in sorted(set(range(len(lengths))) - set(parents)):
        chain = [i]
        while parents[chain[-1]] >= 0:
            chain.append(parents[chain[-1]])
        examples.append(torch.cat([own[j] for j in reversed(chain)]))
    longest = -(-max(len(e) for e in examples) // 16) * 16
    slots = torch.cat([k * longest + torch.arange(len(e)) for k, e in enumerate(examples)])
    tokens = torch.cat(examples)
    gather = torch.zeros(len(examples) * longest, dtype=torch.long)
    gather[slots] = tokens
    # A prefix token's output comes from its first copy (every copy computes the same).
    scatter = torch.empty(starts[-1], dtype=torch.long).scatter_reduce_(0, tokens, slots, "amin", include_self=False)
    copies = (slots.to(device), tokens.to(device))
    return Segments(scatter.to(device), gather.to(device), (len(examples), longest), None, copies)


def _by_example(rows: torch.Tensor, segments: Segments, kv_heads: int) -> torch.Tensor:
    """[tokens, h, dim] -> [examples, kv_heads, h // kv_heads * longest, dim].

    The padding slots after each example hold copies of some real token: causal attention never
    lets a real position see them, the bidirectional key mask hides them, and their outputs are dropped."""
    return _stack_groups(rows.index_select(0, segments.gather), segments, kv_heads)


def _stack_groups(slots: torch.Tensor, segments: Segments, kv_heads: int) -> torch.Tensor:
    """[examples * longest, h, dim] -> [examples, kv_heads, h // kv_heads * longest, dim]."""
    examples, longest = segments.shape
    _, h, dim = slots.shape
    stacked = slots.view(examples, longest, kv_heads, h // kv_heads, dim).permute(0, 2, 3, 1, 4)
    return stacked.reshape(examples, kv_heads, h // kv_heads * longest, dim)


def _to_rows(padded: torch.Tensor, segments: Segments, summed: bool = False) -> torch.Tensor:
    """The inverse of `_by_example` for the real tokens: [tokens, h, dim]. `summed`: a token held
    by several slots (a shared prefix) gets the sum of them, as a gradient must."""
    examples, longest = segments.shape
    _, kv_heads, rows, dim = padded.shape
    groups = rows // longest
    out = padded.view(examples, kv_heads, groups, longest, dim).permute(0, 3, 1, 2, 4)
    return _real_slots(out.reshape(examples * longest, kv_heads * groups, dim), segments, summed)


def _real_slots(slots: torch.Tensor, segments: Segments, summed: bool) -> torch.Tensor:
    """[examples * longest, h, dim] -> [tokens, h, dim], as `_to_rows`."""
    if not summed or segments.copies is None:
        return slots.index_select(0, segments.scatter)
    copies, tokens = segments.copies
    summed_rows = slots.new_zeros(len(segments.scatter), *slots.shape[1:])
    return summed_rows.index_add_(0, tokens, slots.index_select(0, copies))


def _probs(query, key, scaling: float, key_mask: torch.Tensor | None) -> torch.Tensor:
    """softmax(scaling * q k^T + mask) in float32, queries as in `_by_example`; the mask is causal, or
    hides the padding keys (`Segments.key_mask`)."""
    examples, kv_heads, rows, dim = query.shape
    longest = key.shape[2]
    if key_mask is None:
        mask = torch.full((longest, longest), float("-inf"), dtype=query.dtype, device=query.device).triu(1)
        mask = mask.repeat(rows // longest, 1)
    else:
        mask = key_mask.to(query.dtype).repeat_interleave(kv_heads, 0)
    # One fused kernel for scaling * q k^T + mask, over [examples * kv_heads] matrices.
    scores = torch.baddbmm(
        mask,
        query.reshape(-1, rows, dim),
        key.reshape(-1, longest, dim).transpose(1, 2),
        alpha=scaling,
    )
    return scores.softmax(-1, dtype=torch.float32).view(examples, kv_heads, rows, longest)


def _grad_slots(grad_rows: torch.Tensor, segments: Segments) -> torch.Tensor:
    """[tokens, h, dim] -> [examples * longest, h, dim], zero (not copied) at the padding: the
    dropped outputs have no gradient."""
    grad_slots = grad_rows.new_zeros(segments.gather.numel(), *grad_rows.shape[1:])
    return grad_slots.index_copy_(0, segments.scatter, grad_rows)


class _SegmentAttention(torch.autograd.Function):
    """Per-example attention (causal or bidirectional) of packed rows ([tokens, heads, dim] each),
    saving only them.

    The query heads that share a key/value head are stacked along the rows, so keys and values are
    never repeated. Backward rebuilds the per-example layout and recomputes the probabilities, as
    flash attention does: keeping them would cost every layer [examples, heads, longest, longest]
    floats, and keeping the padded layout would cost the padding too.
    """

    @staticmethod
    def forward(ctx, query, key, value, segments: Segments, scaling: float):
        ctx.save_for_backward(query, key, value)
        ctx.segments, ctx.scaling = segments, scaling
        kv_heads = key.shape[1]
        q, k, v = (_by_example(t, segments, kv_heads) for t in (query, key, value))
        return _to_rows(_probs(q, k, scaling, segments.key_mask).to(v.dtype) @ v, segments)

    @staticmethod
    def backward(ctx, grad_rows):
        segments, scaling = ctx.segments, ctx.scaling
        saved = ctx.saved_tensors  # read once: under non-reentrant checkpointing a second read fails
        kv_heads = saved[1].shape[1]
        query, key, value = (_by_example(t, segments, kv_heads) for t in saved)
        grad_out = _stack_groups(_grad_slots(grad_rows, segments), segments, kv_heads)
        probs = _probs(query, key, scaling, segments.key_mask)
        grad_value = probs.to(value.dtype).transpose(-1, -2) @ grad_out
        grad_scores = (grad_out @ value.transpose(-1, -2)).float()
        row_dot = (grad_scores * probs).sum(-1, keepdim=True)
        grad_scores = grad_scores.sub_(row_dot).mul_(probs).mul_(scaling).to(query.dtype)
        grads = (grad_scores @ key, grad_scores.transpose(-1, -2) @ query, grad_value)
        return (*(_to_rows(g, segments, summed=True) for g in grads), None, None)


_FLASH = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default
_FLASH_BACKWARD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward.default


def _heads(rows: torch.Tensor, segments: Segments) -> torch.Tensor:
    """[tokens, h, dim] -> [examples, h, longest, dim], SDPA's layout, as a view of the gathered
    [examples, longest, h, dim] (the padding slots as in `_by_example`)."""
    examples, longest = segments.shape
    return rows.index_select(0, segments.gather).view(examples, longest, *rows.shape[1:]).transpose(1, 2)


def _heads_to_rows(heads: torch.Tensor, segments: Segments, summed: bool = False) -> torch.Tensor:
    """The inverse of `_heads` (`summed` as in `_to_rows`), for any strides the kernel wrote."""
    examples, h, longest, dim = heads.shape
    return _real_slots(heads.transpose(1, 2).reshape(examples * longest, h, dim), segments, summed)


def _head_mask(segments: Segments, dtype: torch.dtype) -> torch.Tensor | None:
    """The key mask in `_heads`' layout ([examples, 1, 1, longest]); None: causal."""
    return None if segments.key_mask is None else segments.key_mask[:, None].to(dtype)


class _FlashSegmentAttention(torch.autograd.Function):
    """Per-example attention (causal or bidirectional) through the CPU flash kernel that SDPA calls,
    saving the packed rows (queries, keys, values, the output, which o_proj keeps anyway) and the
    log-sum-exp only: SDPA's autograd would keep the padded per-example copies of all four (SmolLM2
    LoRA, float32: +230 MB peak RSS). The kernel attends query head h to key head h // groups itself."""

    @staticmethod
    def forward(ctx, query, key, value, segments: Segments, scaling: float):
        mask = _head_mask(segments, query.dtype)
        q, k, v = (_heads(t, segments) for t in (query, key, value))
        out, lse = _FLASH(q, k, v, 0.0, mask is None, attn_mask=mask, scale=scaling)
        rows = _heads_to_rows(out, segments)
        ctx.save_for_backward(query, key, value, rows, lse)
        ctx.segments, ctx.scaling = segments, scaling
        return rows

    @staticmethod
    def backward(ctx, grad_rows):
        segments, scaling = ctx.segments, ctx.scaling
        saved = ctx.saved_tensors
        q, k, v, out = (_heads(t, segments) for t in saved[:4])
        examples, longest = segments.shape
        grad_out = _grad_slots(grad_rows, segments).view(examples, longest, *grad_rows.shape[1:]).transpose(1, 2)
        mask = _head_mask(segments, q.dtype)
        grads = _FLASH_BACKWARD(grad_out, q, k, v, out, saved[4], 0.0, mask is None, attn_mask=mask, scale=scaling)
        return (*(_heads_to_rows(g, segments, summed=True) for g in grads), None, None)


def segment_attention(query, key, value, segments: Segments, scaling: float, kernel: str | None = None):
    """Packed rows [tokens, heads, dim] in, [tokens, heads, dim] out. `kernel`: "sdpa" (the default on
    CUDA and for bidirectional segments), "flash" (CPU: causal float32) or "matmul" (CPU: causal bf16).
    Measured on CPU: the matmul version was ~2x faster than SDPA's flash kernel for causal bf16
    attention at fine-tuning lengths (avx512_bf16 CPU), slower in float32 (SmolLM2-135M LoRA on E2E, 2
    AVX-512 cores without bf16, steps alternating in one process: 257 against "flash"'s 267 tokens/s
    at the same peak RSS; in another such run 269 against SDPA's 284, whose autograd cost +230 MB).
    For an encoder's bidirectional attention SDPA beat the matmul version (MiniLM contrastive
    training, 2 AVX2 cores: 10.2 against 9.4 pairs/s, 2.3 against 2.7 GB peak RSS) and matched
    "flash" (AVX-512: 13.3 pairs/s both, ~70 MB less peak RSS)."""
    if kernel is None:
        if query.device.type == "cuda" or segments.key_mask is not None:
            kernel = "sdpa"
        else:
            kernel = "flash" if query.dtype == torch.float32 else "matmul"
    if kernel == "matmul":
        return _SegmentAttention.apply(query, key, value, segments, scaling)
    if kernel == "flash":
        return _FlashSegmentAttention.apply(query, key, value, segments, scaling)
    examples, longest = segments.shape
    kv_heads, dim = key.shape[1], key.shape[2]
    # The stacked rows are the query heads in transformers' order (head h reads kv head h // groups).
    heads = _by_example(query, segments, kv_heads).view(examples, query.shape[1], longest, dim)
    k, v = (_by_example(t, segments, kv_heads) for t in (key, value))
    causal = segments.key_mask is None
    mask = _head_mask(segments, heads.dtype)
    out = F.scaled_dot_product_attention(heads, k, v, mask, is_causal=causal, scale=scaling, enable_gqa=True)
    return _to_rows(out.view(examples, kv_heads, -1, dim), segments)


def _capped_attention(query, key, value, allowed: torch.Tensor, scaling: float, softcap: float | None):
    """Attention with the scores soft-capped (softcap * tanh(scores / softcap), Gemma 2) where
    `softcap` is set: [batch, h, q, dim] queries, [batch, kv_heads, k, dim] keys and values,
    `allowed` a boolean mask broadcast to [batch, h, q, k]. No fused kernel caps scores, so this is
    transformers' eager arithmetic, its [q, k] probabilities kept by autograd."""
    groups = query.shape[1] // key.shape[1]
    key, value = (t.repeat_interleave(groups, 1) for t in (key, value))
    scores = (query @ key.transpose(-1, -2)) * scaling
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    return scores.softmax(-1, dtype=torch.float32).to(value.dtype) @ value


def _causal(length: int, sliding_window: int | None, device: torch.device) -> torch.Tensor:
    """[length, length]: query i sees key j <= i, and within a sliding window only i - j < window
    (transformers' `sliding_window_overlay`)."""
    offsets = torch.arange(length, device=device)
    distance = offsets[:, None] - offsets[None, :]
    allowed = distance >= 0
    return allowed if sliding_window is None else allowed & (distance < sliding_window)


def _windowed_segment_attention(rows, segments: Segments, scaling: float, sliding_window, softcap):
    """`segment_attention` for a sliding window or soft-capped scores, which its kernels do not do:
    the same per-example layout, attended by `_capped_attention` (autograd sums a shared prefix's
    copies through the gather)."""
    _, longest = segments.shape
    q, k, v = (_heads(t, segments) for t in rows)
    if segments.key_mask is None:
        allowed = _causal(longest, sliding_window, q.device)
    else:  # bidirectional: every real key, none of the padding
        allowed = (segments.key_mask == 0)[:, None]
    return _heads_to_rows(_capped_attention(q, k, v, allowed, scaling, softcap), segments)


def packed_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    segments: Segments | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' attention interface. `sliding_window` (Mistral, Gemma's local layers, Qwen's
    sliding layers) and `softcap` (Gemma 2) are honoured here: SDPA would ignore both."""
    scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
    if segments is None:
        if softcap is None:  # the mask transformers built already holds any sliding window
            return sdpa_attention_forward(
                module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
            )
        if dropout:
            raise ValueError("soft-capped attention takes no attention dropout")
        if attention_mask is None:  # SDPA's mask skipped: plain causal
            allowed = _causal(query.shape[2], sliding_window, query.device)
        else:
            allowed = attention_mask if attention_mask.dtype == torch.bool else attention_mask == 0
        out = _capped_attention(query, key, value.to(query.dtype), allowed, scaling, softcap)
        return out.transpose(1, 2).contiguous(), None
    if query.shape[0] != 1 or dropout:
        raise ValueError("packed attention takes one row of examples and no attention dropout")
    # Under autocast the rotary embedding hands back float32 queries and keys (its cos/sin are
    # float32); attention runs in the autocast dtype like the projections around it.
    dtype = active_dtype(query)
    # [1, h, tokens, dim] -> [tokens, h, dim]: the layout the projections wrote and o_proj reads.
    rows = [t[0].transpose(0, 1).to(dtype).contiguous() for t in (query, key, value)]
    if sliding_window is not None or softcap is not None:
        out = _windowed_segment_attention(rows, segments, scaling, sliding_window, softcap)
    else:
        out = segment_attention(*rows, segments, scaling)
    return out.unsqueeze(0), None


AttentionInterface.register(NAME, packed_attention)
# Outside packed batches (generation, padded batches) the masks are SDPA's.
AttentionMaskInterface.register(NAME, sdpa_mask)
