"""Every fast path on tiny random models of each family: it handles the family exactly or steps aside.

One row per family (family_models.py). The reference is transformers' own eager forward and
backward, one example at a time: no padding, no packing. Whole runs of the recipe on the same models
are in test_family_recipes.py.
"""

import copy

import pytest
import torch
from family_models import FAMILIES, VOCAB, tiny_model
from peft import LoraConfig, get_peft_model

from tunesmith.data.batching import make_batch
from tunesmith.data.tokenize import IGNORE_INDEX, TokenizedExample
from tunesmith.kernels import attention
from tunesmith.kernels.fused_lora import fuse_lora
from tunesmith.kernels.lean import LeanStorage
from tunesmith.train.fast_paths import fast_paths_used
from tunesmith.train.loss import labelled_loss

_MODELS: dict[str, torch.nn.Module] = {}


def _base(family: str):
    """The family's tiny model (random weights, fixed seed), built once; callers get a copy."""
    if family not in _MODELS:
        model = tiny_model(family)
        model.set_attn_implementation(attention.NAME)
        _MODELS[family] = model
    return copy.deepcopy(_MODELS[family])


def _model(family: str, method: str):
    model = _base(family)
    if method == "lora":
        torch.manual_seed(1)
        # Random B matrices, so A gets gradients too; no dropout, so every pass computes one function.
        lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear", init_lora_weights=False)
        model = get_peft_model(model, lora)
    else:
        model.requires_grad_(True)
    return model.train()


def _examples() -> list[TokenizedExample]:
    generator = torch.Generator().manual_seed(0)
    examples = []
    for length in (9, 14, 21):
        ids = torch.randint(3, VOCAB, (length,), generator=generator).tolist()
        prompt = length // 3
        examples.append(TokenizedExample(ids, [IGNORE_INDEX] * prompt + ids[prompt:], 0, length))
    return examples


def _grads(model) -> dict[str, torch.Tensor]:
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return grads


_REFERENCES: dict[tuple[str, str], tuple[float, dict[str, torch.Tensor]]] = {}


def _reference(family: str, method: str, examples) -> tuple[float, dict[str, torch.Tensor]]:
    """transformers' eager model(...).loss, one example at a time, weighted to a mean over label
    tokens; computed once per family and method."""
    if (family, method) not in _REFERENCES:
        _REFERENCES[family, method] = _eager_loss(_model(family, method), examples)
    return _REFERENCES[family, method]


def _eager_loss(model, examples) -> tuple[float, dict[str, torch.Tensor]]:
    model.set_attn_implementation("eager")
    counts = [sum(label != IGNORE_INDEX for label in e.labels[1:]) for e in examples]
    total = 0.0
    for example, count in zip(examples, counts, strict=True):
        ids, labels = torch.tensor([example.input_ids]), torch.tensor([example.labels])
        loss = model(input_ids=ids, labels=labels, use_cache=False).loss * count / sum(counts)
        loss.backward()
        total += loss.item()
    return total, _grads(model)


def _tunesmith(model, examples, fast: bool, packing: bool) -> tuple[float, dict[str, torch.Tensor]]:
    batch = make_batch(examples, 0, packing)
    parts = labelled_loss(model, batch, 5, fast)  # chunks of 5 label rows: several, the last partial
    loss = parts.loss_sum / parts.n_label_tokens
    loss.backward()
    return loss.item(), _grads(model)


def _close(actual: float | torch.Tensor, expected: float | torch.Tensor, what: str) -> None:
    actual, expected = torch.as_tensor(actual), torch.as_tensor(expected)
    error = ((actual - expected).norm() / expected.norm().clamp_min(1e-30)).item()
    assert error <= 1e-5, f"{what}: relative error {error:.2e}"


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(
    "method, fast, packing",
    [("full", True, True), ("full", True, False), ("full", False, False), ("lora", True, True), ("lora", False, False)],
)
def test_loss_and_gradients_match_transformers(family, method, fast, packing):
    examples = _examples()
    expected_loss, expected = _reference(family, method, examples)
    model = _model(family, method)
    if method == "lora" and fast:  # as the recipe sets them up (train/recipe.py)
        LeanStorage(model, torch.float32)
        fuse_lora(model)
    loss, grads = _tunesmith(model, examples, fast, packing)
    _close(loss, expected_loss, "loss")
    assert grads.keys() == expected.keys()
    for name in expected:
        _close(grads[name], expected[name], name)


_PRE_NORMS = {"input_layernorm", "post_attention_layernorm", "norm"}
# Gemma's post_attention_layernorm and post_feedforward_layernorm feed the residual, not a linear layer.
_GEMMA_NORMS = {"input_layernorm", "pre_feedforward_layernorm", "norm"}
LEAN_NORMS = {family: _PRE_NORMS for family in FAMILIES} | {"gemma2": _GEMMA_NORMS, "gemma3": _GEMMA_NORMS}


@pytest.mark.parametrize("family", FAMILIES)
def test_lean_storage_casts_only_the_norms_that_feed_linear_layers(family):
    """Casting a norm's output to the compute dtype is exact only where a linear layer (which autocast
    casts for) reads it; q/k-norms feed the rotary embedding, Gemma's post-norms the residual."""
    model = _model(family, "lora")
    LeanStorage(model, torch.bfloat16)
    touched = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if type(module).__name__.startswith("Lean") or (module._forward_hooks and "norm" in name)
    }
    assert touched == LEAN_NORMS[family]


_SWIGLU = "gated MLPs (silu) as one function each"
FAST_PATHS = {
    # family: (packed attention, label-only loss, fused LoRA)
    "llama3": ("on", "on", _SWIGLU),
    "qwen2": ("on", "on", _SWIGLU),
    "qwen3": ("on", "on", _SWIGLU),
    "mistral": ("on: per-example eager attention for the sliding window 4", "on", _SWIGLU),
    "gemma2": (
        "on: per-example eager attention for the sliding window 4 and soft-capped scores",
        "on: final soft-cap",
        "gated MLPs (gelu_tanh) as one function each",
    ),
    "gemma3": (
        "on: per-example eager attention for the sliding window 4",
        "on",
        "gated MLPs (gelu_tanh) as one function each",
    ),
    "phi3": ("on", "on", "layers one by one (no gate_proj/up_proj/down_proj MLP to fuse whole)"),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_fast_paths_used_says_what_each_path_does_for_the_family(family, tiny_config):
    cfg = tiny_config(data={"packing": True}, method={"dropout": 0.0})
    model = _model(family, "lora")
    lean = LeanStorage(model, torch.float32)
    fuse_lora(model)
    used = fast_paths_used(cfg, model, lean, False, torch.device("cpu"), "ddp", 1)
    attention_state, loss_state, fused_state = FAST_PATHS[family]
    assert used["packed_attention"] == attention_state
    assert used["label_only_loss"] == loss_state
    assert used["fused_lora"].startswith("on: ") and used["fused_lora"].endswith(fused_state)
    assert used["vocab_split"] == "off: not FSDP2 on several processes"
    off = fast_paths_used(tiny_config(train={"fast_paths": False}), model, None, False, torch.device("cpu"), "ddp", 1)
    assert {off[path] for path in ("packed_attention", "label_only_loss", "fused_lora", "lean_storage")} == {
        "off: train.fast_paths is false"
    }
