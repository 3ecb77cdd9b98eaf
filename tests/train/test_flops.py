import json
import time
from types import SimpleNamespace

import pytest
import torch
from peft import LoraConfig, get_peft_model

from tunesmith.data.preference import TokenizedPair
from tunesmith.data.tokenize import IGNORE_INDEX, TokenizedExample
from tunesmith.models import load_model
from tunesmith.train import flops
from tunesmith.train.flops import PeakFlops, flops_per_token, mean_attended_keys

# tiny-llama-test: hidden 64, 4 heads of 16, 2 kv heads, mlp 128, 2 layers, vocab 49152 (tied).
LAYER = 64 * 64 + 2 * (64 * 32) + 64 * 64 + 3 * (64 * 128)
BODY, HEAD, LAYERS, ATTN_WIDTH = 2 * LAYER, 49152 * 64, 2, 64
LORA_R = 4
# Per layer: r * (in + out) for q, k, v, o, gate, up, down.
ADAPTERS = 2 * LORA_R * (2 * (64 + 64) + 2 * (64 + 32) + 2 * (64 + 128) + (128 + 64))


@pytest.fixture(scope="module")
def tiny(tiny_model_name):
    return load_model(tiny_model_name).model


@pytest.mark.parametrize(
    "method, label_share, keys, expected",
    [
        ("full", 1.0, 0.0, 6 * (BODY + HEAD)),
        ("full", 0.25, 0.0, 6 * (BODY + 0.25 * HEAD)),
        ("full", 1.0, 50.0, 6 * (BODY + HEAD) + 12 * LAYERS * ATTN_WIDTH * 50),
        ("lora", 1.0, 0.0, 4 * (BODY + HEAD) + 6 * ADAPTERS),
        ("lora", 0.5, 10.0, 4 * (BODY + 0.5 * HEAD) + 6 * ADAPTERS + 12 * LAYERS * ATTN_WIDTH * 10),
        ("frozen", 1.0, 0.0, 4 * (BODY + HEAD)),
    ],
)
def test_flops_per_token(tiny, method, label_share, keys, expected):
    model = tiny
    if method == "lora":
        model = get_peft_model(tiny, LoraConfig(r=LORA_R, target_modules="all-linear"))
    else:
        tiny.requires_grad_(method == "full")
    assert flops_per_token(model, label_share, keys) == pytest.approx(expected)
    if method == "lora":
        model.unload()


@pytest.mark.parametrize("lengths, expected", [([1], 1.0), ([3], 2.0), ([1, 3], 7 / 4), ([], 0.0)])
def test_mean_attended_keys(lengths, expected):
    assert mean_attended_keys(lengths) == pytest.approx(expected)


def test_peak_is_measured_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNESMITH_HOME", str(tmp_path))
    peak = PeakFlops("cpu", torch.float32, seconds=0.05).value
    assert 1e8 < peak < 1e15
    cached = json.loads((tmp_path / "peak_flops.json").read_text())
    assert list(cached.values()) == [peak]

    def must_not_time(*args):
        raise AssertionError("timed again instead of reading the cache")

    monkeypatch.setattr(flops, "_time_matmul", must_not_time)
    assert PeakFlops("cpu", torch.float32).value == peak
    # Another dtype is another entry, measured on its own.
    monkeypatch.setattr(flops, "_time_matmul", lambda device, dtype, seconds: 123.0)
    assert PeakFlops("cpu", torch.bfloat16).value == 123.0
    assert len(json.loads((tmp_path / "peak_flops.json").read_text())) == 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_timing_the_peak_stays_near_its_budget_without_bfloat16_instructions(dtype):
    # Without avx512_bf16 a 2048-square bfloat16 product takes about a minute on one thread: the
    # first training step of a bfloat16 run must not wait for it (twice, once per DDP process).
    start = time.perf_counter()
    peak = flops._time_matmul(torch.device("cpu"), dtype, seconds=0.2)
    assert time.perf_counter() - start < 15
    assert peak > 1e7


def test_a_peak_timed_under_load_is_raised_by_work_that_beats_it(tmp_path, monkeypatch):
    # A peak first timed while the CPU was shared (100 FLOP/s) must not give MFU 8.0 later: work at
    # 800 FLOP/s has the matmul timed again, and the peak is at least what the work achieved.
    monkeypatch.setenv("TUNESMITH_HOME", str(tmp_path))
    timings = iter([100.0, 500.0, 2000.0])
    monkeypatch.setattr(flops, "_time_matmul", lambda device, dtype, seconds: next(timings))
    peak = PeakFlops("cpu", torch.float32)
    assert peak.utilisation(50.0) == pytest.approx(0.5)  # below the peak: not timed again
    assert peak.utilisation(800.0) == pytest.approx(1.0)  # timed again at 500: the work's 800 is the peak
    assert PeakFlops("cpu", torch.float32).value == 800.0  # cached for the next run
    assert peak.utilisation(1000.0) == pytest.approx(0.5)  # timed again at 2000
    assert json.loads((tmp_path / "peak_flops.json").read_text()) == {peak.key: 2000.0}


def test_the_peak_is_cached_per_cpu_instruction_set():
    # One model name, two machines: with and without avx512_bf16 differ 10x in bfloat16.
    cpuinfo = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 fma {}\n"
    keys = [flops.cpu_name(cpuinfo.format(extra)) for extra in ("", "avx512f avx512_bf16")]
    assert keys == ["AMD EPYC+avx2+fma", "AMD EPYC+avx2+fma+avx512f+avx512_bf16"]


class _Toy(torch.nn.Module):
    """A trained 4x3 layer (6 x 12 = 72 FLOPs a token) and a frozen 3x5 output layer (4 x 15 = 60 a
    labelled token); one attention layer one head of width 2 (3 x 4 x 2 = 24 FLOPs a token and key)."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Linear(4, 3, bias=False)
        self.head = torch.nn.Linear(3, 5, bias=False).requires_grad_(False)
        self.config = SimpleNamespace(num_hidden_layers=1, num_attention_heads=1, hidden_size=2, head_dim=None)

    def get_output_embeddings(self):
        return self.head


# A DPO pair: a 6-token prompt, answers of 2 and 3 tokens (5 label tokens): 8 + 9 = 17 example tokens.
PROMPT = [1, 2, 3, 4, 5, 6]
CHOSEN = TokenizedExample([*PROMPT, 7, 8], [IGNORE_INDEX] * 6 + [7, 8], 1, 8)
REJECTED = TokenizedExample([*PROMPT, 9, 10, 11], [IGNORE_INDEX] * 6 + [9, 10, 11], 1, 9)


@pytest.mark.parametrize(
    "packing, computed, keys, expected",
    [
        # Packed: the prompt's first 5 tokens run once (its last predicts each answer's first token,
        # so each answer keeps it): 5 + 3 + 4 = 12 tokens; 12 x 72 + 5 x 60 = 1164 FLOPs.
        (True, 12, 0.0, 1164 / 2 / 100),
        # Padded: both whole sequences run: 17 x 72 + 5 x 60 = 1524 FLOPs.
        (False, 17, 0.0, 1524 / 2 / 100),
        # Attention to 3 keys a token on average: + 12 x 24 x 3 = 864.
        (True, 12, 3.0, (1164 + 864) / 2 / 100),
    ],
)
def test_mfu_counts_a_shared_prompt_once(packing, computed, keys, expected):
    from tunesmith.train.dpo import pair_batch

    batch = pair_batch([TokenizedPair(CHOSEN, REJECTED, 1, 0)], pad_id=0, packing=packing)
    assert batch.n_tokens == computed
    # 2 seconds on a machine of 100 FLOP/s.
    assert flops.model_flops_per_second(_Toy(), batch.n_tokens, 5, keys, 2.0) / 100.0 == pytest.approx(expected)
