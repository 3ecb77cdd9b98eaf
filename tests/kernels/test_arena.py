"""The activation arena moves saved tensors, never changes what backward computes."""

import pytest
import torch
from peft import LoraConfig, get_peft_model

from tunesmith.data.batching import make_batch
from tunesmith.data.formats import read_examples
from tunesmith.data.tokenize import tokenize_examples
from tunesmith.kernels.arena import ActivationArena, ArenaReusedError
from tunesmith.kernels.fused_lora import fuse_lora
from tunesmith.kernels.lean import LeanStorage
from tunesmith.models import load_model


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_a_training_step_is_bit_identical_with_and_without_it(
    train_step, tiny_model_name, small_e2e, smol_tokenizer, dtype
):
    examples = tokenize_examples(smol_tokenizer, read_examples(small_e2e / "train.jsonl").examples[:8], 128)
    torch.manual_seed(0)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    model = get_peft_model(load_model(tiny_model_name).model, lora).train()
    LeanStorage(model, dtype)
    fuse_lora(model)
    arena = ActivationArena()
    for batch in (make_batch(examples[:4], 2, True), make_batch(examples[4:], 2, True)):
        plain_loss, plain = train_step(model, batch, dtype)
        arena_loss, got = train_step(model, batch, dtype, arena)
        assert arena_loss == plain_loss
        assert all(torch.equal(got[n], g) for n, g in plain.items())
        assert arena.stored_bytes > 0 and len(arena.blocks) == 1  # the second pass reused the block


def test_a_tensor_saved_twice_is_stored_once():
    arena = ActivationArena()
    x = torch.randn(1000, 100, requires_grad=True)
    with arena.saving():
        y = x.exp()  # saves its output y
        out = (y.sin() + y.cos()).sum()  # both save y again
    assert arena.stored_bytes == y.nbytes  # exp, sin and cos all keep y: one copy
    out.backward()
    assert torch.allclose(x.grad, (x.exp() * (x.exp().cos() - x.exp().sin())), atol=1e-5)


def test_a_tensor_saved_in_two_shapes_is_stored_once():
    arena = ActivationArena()
    x = torch.randn(1, 1000, 100, requires_grad=True)
    with arena.saving():
        y = x.exp()  # saves y as [1, 1000, 100]
        out = y.reshape(1000, 100).sin().sum()  # saves the same memory as [1000, 100]
    assert arena.stored_bytes == y.nbytes
    out.backward()
    assert torch.allclose(x.grad, x.exp() * x.exp().cos(), atol=1e-5)


def test_backward_after_the_arena_was_reused_is_refused():
    arena = ActivationArena()
    x = torch.randn(1000, 100, requires_grad=True)
    with arena.saving():
        first = x.exp().sum()
    with arena.saving():
        x.sin().sum()
    with pytest.raises(ArenaReusedError, match="reused"):
        first.backward()
