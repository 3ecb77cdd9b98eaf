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


@pytest.mark.parametrize("causal", [True, False])  # decoders / encoders
@pytest.mark.parametrize("fused", [False, True])  # the CPU kernel / the SDPA kernel CUDA takes
@pytest.mark.parametrize("heads, kv_heads", [(4, 4), (9, 3), (4, 1)])
@pytest.mark.parametrize("lengths", [[5], [7, 1, 12, 3], [30, 2, 30]])
def test_outputs_and_gradients_equal_each_example_alone(heads, kv_heads, lengths, fused, causal, monkeypatch):
    kernel = attention.segment_attention
    monkeypatch.setattr(attention, "segment_attention", lambda *a: kernel(*a, fused=fused))
    q, k, v = _inputs(lengths, heads, kv_heads)
    segments = attention.segments(lengths, torch.device("cpu"), causal=causal)
    packed, _ = attention.packed_attention(_Layer(heads, kv_heads), q, k, v, None, segments=segments)
    alone = _one_by_one(q, k, v, lengths, causal)
    assert packed.shape == alone.shape == (1, sum(lengths), heads, 16)
    assert torch.allclose(packed, alone, atol=1e-5)

    upstream = torch.randn_like(alone)
    got = torch.autograd.grad((packed * upstream).sum(), (q, k, v))
    expected = torch.autograd.grad((alone * upstream).sum(), (q, k, v))
    for name, g, e in zip("qkv", got, expected, strict=True):
        assert ((g - e).norm() / e.norm()).item() <= 1e-5, name


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
