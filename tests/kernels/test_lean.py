"""Lean storage must change where tensors live, never what a LoRA step computes."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file

from tunesmith.data.batching import make_batch
from tunesmith.data.formats import read_examples
from tunesmith.data.tokenize import tokenize_examples
from tunesmith.kernels.lean import LeanStorage
from tunesmith.models import load_model, resolve_model_path


@pytest.fixture(scope="module")
def examples(small_e2e, smol_tokenizer):
    return tokenize_examples(smol_tokenizer, read_examples(small_e2e / "train.jsonl").examples[:4], 128)


def _lora(name: str):
    torch.manual_seed(0)
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear", init_lora_weights=False)
    return get_peft_model(load_model(name).model, lora).train()


def _error(grads, reference) -> float:
    return max(((grads[n] - g).norm() / g.norm()).item() for n, g in reference.items())


@pytest.mark.parametrize("packing", [False, True])
def test_a_lean_step_is_as_accurate_as_plain_autocast(train_step, tiny_model_name, examples, packing):
    """Same loss; gradients as close to float32's as autocast's own are. (They are not bit-equal:
    the gradients of a bf16 activation read by several layers are summed in bf16.)"""
    batch = make_batch(examples, 2, packing)
    _, exact = train_step(_lora(tiny_model_name), batch, torch.float32)
    plain_loss, plain_grads = train_step(_lora(tiny_model_name), batch)
    model = _lora(tiny_model_name)
    LeanStorage(model, torch.bfloat16)
    lean_loss, lean_grads = train_step(model, batch)
    assert lean_loss == pytest.approx(plain_loss, rel=1e-6)
    assert lean_grads.keys() == plain_grads.keys()
    assert _error(lean_grads, exact) <= 1.5 * _error(plain_grads, exact)


@pytest.mark.parametrize("packing", [False, True])
def test_in_float32_a_lean_step_equals_the_plain_one(train_step, tiny_model_name, examples, packing):
    """Nothing is cast or copied; the norms keep their output instead of their input, and their
    gradients recover the normalised input from it to float32 rounding."""
    batch = make_batch(examples, 2, packing)
    plain_loss, plain_grads = train_step(_lora(tiny_model_name), batch, torch.float32)
    model = _lora(tiny_model_name)
    where = {n: p.data_ptr() for n, p in model.named_parameters()}
    LeanStorage(model, torch.float32)
    assert {n: p.data_ptr() for n, p in model.named_parameters()} == where
    assert "LeanLlamaRMSNorm" in repr(model)
    lean_loss, lean_grads = train_step(model, batch, torch.float32)
    assert lean_loss == plain_loss
    assert _error(lean_grads, plain_grads) <= 1e-5


def test_frozen_weights_are_bfloat16_while_training_and_the_originals_after_restore(tiny_model_name):
    model = _lora(tiny_model_name)
    lean = LeanStorage(model, torch.bfloat16)
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    assert dtypes["base_model.model.model.layers.0.mlp.up_proj.base_layer.weight"] == torch.bfloat16
    assert dtypes["base_model.model.model.layers.0.mlp.up_proj.lora_A.default.weight"] == torch.float32
    assert dtypes["base_model.model.model.embed_tokens.weight"] == torch.float32
    assert dtypes["base_model.model.model.layers.0.input_layernorm.weight"] == torch.float32

    path = resolve_model_path(tiny_model_name)
    lean.restore(path)
    on_disk = load_file(f"{path}/model.safetensors")
    restored = model.get_base_model().model.layers[0].mlp.up_proj.base_layer.weight
    assert restored.dtype == torch.float32
    assert torch.equal(restored, on_disk["model.layers.0.mlp.up_proj.weight"])
    norm = model.get_base_model().model.layers[0].input_layernorm
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert norm(torch.randn(2, 64)).dtype == torch.float32  # the cast-once hook is gone


@pytest.mark.parametrize("zero_weight", [False, True])
def test_the_cast_norm_has_float32_gradients_to_bf16_precision(zero_weight):
    """Its backward divides its output by the weight, unless a weight is zero."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    from tunesmith.kernels.lean import _lean_norm_forward

    torch.manual_seed(0)
    norm = LlamaRMSNorm(64)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0)
        if zero_weight:
            norm.weight[::7] = 0
    x = torch.randn(3, 10, 64, requires_grad=True)
    upstream = torch.randn(3, 10, 64)
    (expected,) = torch.autograd.grad((norm(x) * upstream).sum(), x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = _lean_norm_forward(norm, x, divide=not zero_weight)
    assert out.dtype == torch.bfloat16
    (got,) = torch.autograd.grad((out.float() * upstream).sum(), x)
    assert torch.isfinite(got).all()
    assert ((got - expected).norm() / expected.norm()).item() < 1e-2
