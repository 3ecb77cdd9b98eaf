"""Packed attention against SDPA run on each example alone: outputs and gradients."""

import pytest
import torch
import torch.nn.functional as F

from tunesmith.kernels import attention


class _Layer:  # what transformers hands an attention function: the module, read for GQA
    def __init__(self, heads: int, kv_heads: int):
        self.num_key_value_groups = heads // kv_heads
        self.is_causal = True


def _inputs(lengths, heads, kv_heads, dtype=torch.float32):
    torch.manual_seed(0)
    tokens = sum(lengths)
    return [torch.randn(1, h, tokens, 16, dtype=dtype, requires_grad=True) for h in (heads, kv_heads, kv_heads)]


def _one_by_one(q, k, v, lengths, causal=True):
    outs, at = [], 0
    for n in lengths:
        piece = slice(at, at + n)
        out = F.scaled_dot_product_attention(
            q[:, :, piece], k[:, :, piece], v[:, :, piece], is_causal=causal, enable_gqa=q.shape[1] != k.shape[1]
        )
        outs.append(out.transpose(1, 2))
        at += n
    return torch.cat(outs, 1)


def _assert_same_gradients(got_out, expected_out, inputs) -> tuple[torch.Tensor, ...]:
    """q, k, v gradients of both outputs under one random upstream gradient: within 1e-5 relative."""
    upstream = torch.randn_like(expected_out)
    got = torch.autograd.grad((got_out * upstream).sum(), inputs)
    expected = torch.autograd.grad((expected_out * upstream).sum(), inputs)
    for name, g, e in zip("qkv", got, expected, strict=True):
        assert ((g - e).norm() / e.norm()).item() <= 1e-5, name
    return got


@pytest.mark.parametrize("causal", [True, False])  # decoders / encoders
@pytest.mark.parametrize("kernel", ["matmul", "flash", "sdpa"])  # CPU bf16 / CPU float32 / CUDA
@pytest.mark.parametrize("heads, kv_heads", [(4, 4), (9, 3), (4, 1)])
@pytest.mark.parametrize("lengths", [[5], [7, 1, 12, 3], [30, 2, 30]])
def test_outputs_and_gradients_equal_each_example_alone(heads, kv_heads, lengths, kernel, causal, monkeypatch):
    segment_attention = attention.segment_attention
    monkeypatch.setattr(attention, "segment_attention", lambda *a: segment_attention(*a, kernel=kernel))
    q, k, v = _inputs(lengths, heads, kv_heads)
    segments = attention.segments(lengths, torch.device("cpu"), causal=causal)
    packed, _ = attention.packed_attention(_Layer(heads, kv_heads), q, k, v, None, segments=segments)
    alone = _one_by_one(q, k, v, lengths, causal)
    assert packed.shape == alone.shape == (1, sum(lengths), heads, 16)
    assert torch.allclose(packed, alone, atol=1e-5)

    _assert_same_gradients(packed, alone, (q, k, v))


@pytest.mark.parametrize("kernel", ["matmul", "flash", "sdpa"])
@pytest.mark.parametrize("heads, kv_heads", [(4, 4), (9, 3)])
def test_a_shared_prefix_attends_as_if_copied_into_each_example(heads, kv_heads, kernel, monkeypatch):
    """Row [P1 A1 B1 C P2 A2 B2 pad]: A1 and B1 continue P1 (a DPO prompt and its two answers), C
    stands alone. Each continuation must see exactly what it would as one example with its own
    copy of the prefix, and the prefix's gradient is the sum over its copies."""
    segment_attention = attention.segment_attention
    monkeypatch.setattr(attention, "segment_attention", lambda *a: segment_attention(*a, kernel=kernel))
    lengths, parents = [6, 3, 5, 4, 9, 1, 2, 3], [-1, 0, 0, -1, -1, 4, 4, -1]
    q, k, v = _inputs(lengths, heads, kv_heads)
    segments = attention.segments(lengths, torch.device("cpu"), parents=parents)
    assert segments.shape == (6, 16)  # P1+A1, P1+B1, C, P2+A2, P2+B2, pad: the prefixes are no examples of their own
    packed, _ = attention.packed_attention(_Layer(heads, kv_heads), q, k, v, None, segments=segments)

    starts = torch.tensor([0, *lengths]).cumsum(0).tolist()
    own = [list(range(starts[i], starts[i + 1])) for i in range(len(lengths))]
    examples = [own[0] + own[1], own[0] + own[2], own[3], own[4] + own[5], own[4] + own[6], own[7]]
    copied = [t[:, :, sum(examples, [])] for t in (q, k, v)]
    alone = _one_by_one(*copied, [len(e) for e in examples])
    # Each row token's output from its first copy: prefix tokens from the first continuation.
    first = {}
    for slot, token in enumerate(sum(examples, [])):
        first.setdefault(token, slot)
    expected = alone[:, [first[t] for t in range(sum(lengths))]]
    assert torch.allclose(packed, expected, atol=1e-5)

    got = _assert_same_gradients(packed, expected, (q, k, v))
    # The prefixes' keys and values get gradient from both of their continuations.
    assert got[1][:, :, own[0]].abs().sum() > 0


def test_under_autocast_it_runs_in_bfloat16_close_to_float32():
    lengths = [20, 9, 33]
    q, k, v = _inputs(lengths, 9, 3)
    segments = attention.segments(lengths, torch.device("cpu"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low, _ = attention.packed_attention(_Layer(9, 3), q, k, v, None, segments=segments)
    assert low.dtype == torch.bfloat16
    assert torch.allclose(low.float(), _one_by_one(q, k, v, lengths), atol=3e-2)


def test_without_segments_it_is_sdpa():
    q, k, v = _inputs([12], 4, 2)
    out, _ = attention.packed_attention(_Layer(4, 2), q, k, v, None)
    assert torch.allclose(out, _one_by_one(q, k, v, [12]), atol=1e-6)
