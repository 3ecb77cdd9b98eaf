"""The loss owns lm_head; its gradients must be those of the plain implementation
(model(...).logits + cross-entropy with ignore_index, mean over label tokens)."""

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model

from tunesmith.data.batching import make_batch
from tunesmith.data.formats import read_examples
from tunesmith.data.tokenize import IGNORE_INDEX, tokenize_examples
from tunesmith.models import load_model
from tunesmith.train.loss import labelled_loss


@pytest.fixture(scope="module")
def examples(small_e2e, smol_tokenizer):
    return tokenize_examples(smol_tokenizer, read_examples(small_e2e / "train.jsonl").examples[:4], 128)


def _model(name: str, method: str):
    model = load_model(name).model
    if method == "lora":
        # Random (not zero) B matrices, so that the A matrices get gradients too; no dropout, so
        # that both passes compute the same function.
        lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear", init_lora_weights=False)
        model = get_peft_model(model, lora)
    else:
        model.requires_grad_(True)
    model.train()
    return model


def _grads(model) -> dict[str, torch.Tensor]:
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return grads


def _plain_loss(model, batch) -> torch.Tensor:
    logits = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        use_cache=False,
    ).logits
    return F.cross_entropy(logits.flatten(0, 1).float(), batch.targets.flatten(), ignore_index=IGNORE_INDEX)


@pytest.mark.parametrize(
    "method, packing, chunk_size",
    [
        ("lora", False, 1024),
        ("lora", True, 1024),
        ("lora", False, 7),  # many chunks, the last one partial
        ("full", False, 1024),
        ("full", True, 64),  # several chunks, the last one partial
    ],
)
@pytest.mark.parametrize("fast", [True, False])  # the kernel (kernels/label_loss.py), train.fast_paths=false
def test_gradients_match_the_plain_implementation(tiny_model_name, examples, method, packing, chunk_size, fast):
    model = _model(tiny_model_name, method)
    batch = make_batch(examples, 2, packing)

    # The plain implementation on padded rows: transformers cannot express a packed row's shared prompt.
    plain = _plain_loss(model, make_batch(examples, 2, False))
    plain.backward()
    expected = _grads(model)

    parts = labelled_loss(model, batch, chunk_size, fast)
    assert parts.n_label_tokens == int((batch.targets != IGNORE_INDEX).sum())
    (parts.loss_sum / parts.n_label_tokens).backward()
    got = _grads(model)

    assert (parts.loss_sum / parts.n_label_tokens).item() == pytest.approx(plain.item(), rel=1e-6)
    assert got.keys() == expected.keys() and expected
    if method == "lora":
        assert any("lora_A" in n for n in got) and any("lora_B" in n for n in got)
    else:
        assert any("embed_tokens" in n for n in got)  # tied with lm_head: both uses add up
    for name, grad in expected.items():
        assert grad.norm() > 0, name
        relative = (got[name] - grad).norm() / grad.norm()
        assert relative <= 1e-5, f"{name}: relative gradient error {relative:.2e}"


@torch.no_grad()
def test_token_accuracy_counts_argmax_hits(tiny_model_name, examples):
    model = _model(tiny_model_name, "full").eval()
    batch = make_batch(examples, 2, False)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
    keep = batch.targets != IGNORE_INDEX
    hits = int((logits.argmax(-1)[keep] == batch.targets[keep]).sum())
    assert int(labelled_loss(model, batch, 3).n_correct) == hits


def test_gradient_checkpointing_recomputes_the_same_step(tiny_model_name, examples):
    """Every custom autograd function (fused LoRA, packed attention, the cast norm, the loss) must
    survive being recomputed by non-reentrant checkpointing."""
    from tunesmith.kernels.fused_lora import fuse_lora
    from tunesmith.kernels.lean import LeanStorage

    batch = make_batch(examples, 2, True)
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = _model(tiny_model_name, "lora")
        LeanStorage(model, torch.bfloat16)
        fuse_lora(model)
        if checkpointing:
            model.get_base_model().model.gradient_checkpointing_enable({"use_reentrant": False})
        with torch.autocast("cpu", dtype=torch.bfloat16):
            parts = labelled_loss(model, batch, 1024)
        parts.loss_sum.backward()
        results.append((parts.loss_sum.item(), _grads(model)))
    (loss, grads), (loss_again, grads_again) = results
    assert loss_again == loss
    assert all(torch.equal(grads_again[n], g) for n, g in grads.items())
