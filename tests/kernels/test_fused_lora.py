"""Fused LoRA layers compute PEFT's function: same outputs, same gradients, same parameters."""

import pytest
import torch
from peft import LoraConfig, get_peft_model

from tunesmith.kernels.fused_lora import fuse_lora
from tunesmith.models import load_model


def _lora(name: str, dropout: float = 0.0):
    torch.manual_seed(0)
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules="all-linear", init_lora_weights=False)
    return get_peft_model(load_model(name).model, lora).train()


def _run(model, ids, bf16: bool = False):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = model(input_ids=ids).logits.float()
    (logits.square().mean()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return logits.detach(), grads


def _error(grads, reference) -> float:
    return max(((grads[n] - g).norm() / g.norm()).item() for n, g in reference.items())


@pytest.fixture(scope="module")
def ids():
    torch.manual_seed(1)
    return torch.randint(0, 1000, (2, 24))


def test_float32_outputs_and_gradients_equal_peft(tiny_model_name, ids):
    expected_logits, expected = _run(_lora(tiny_model_name), ids)
    model = _lora(tiny_model_name)
    layers = model.get_base_model().config.num_hidden_layers
    # Each layer: one MLP (gate, up, down together) and q, k, v, o on their own.
    assert fuse_lora(model) == 5 * layers
    assert "FusedLlamaMLP" in repr(model) and "FusedLinear" in repr(model)  # print(model) shows it
    logits, got = _run(model, ids)
    assert torch.allclose(logits, expected_logits, atol=1e-5)
    assert got.keys() == expected.keys() and any("mlp.down_proj.lora_A" in n for n in got)
    assert _error(got, expected) <= 1e-5


def test_under_autocast_it_is_as_accurate_as_peft(tiny_model_name, ids):
    _, exact = _run(_lora(tiny_model_name), ids)
    _, plain = _run(_lora(tiny_model_name), ids, bf16=True)
    model = _lora(tiny_model_name)
    fuse_lora(model)
    _, fused = _run(model, ids, bf16=True)
    assert _error(fused, exact) <= 1.5 * _error(plain, exact)


def test_layers_that_are_not_plain_lora_keep_peft_forward(tiny_model_name, ids):
    """Dropout (a different function in training) and disabled adapters fall back to PEFT."""
    expected_logits, _ = _run(_lora(tiny_model_name, dropout=0.5).eval(), ids)
    model = _lora(tiny_model_name, dropout=0.5)
    fuse_lora(model)
    torch.manual_seed(3)
    a, _ = _run(model, ids)
    torch.manual_seed(4)
    b, _ = _run(model, ids)
    assert not torch.equal(a, b)  # dropout is live: PEFT's forward ran
    model.eval()
    with torch.no_grad(), model.disable_adapter():
        base = model(input_ids=ids).logits
    with torch.no_grad():
        assert torch.allclose(base, load_model(tiny_model_name).model(input_ids=ids).logits, atol=1e-5)
    assert not torch.allclose(base, expected_logits)
