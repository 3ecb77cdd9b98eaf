"""Logits kept for backward give exactly the gradients of logits recomputed in backward."""

import pytest
import torch

from tunesmith.kernels import label_loss
from tunesmith.kernels.label_loss import OutputLayerLoss


def _run(hidden, weight, targets, dtype, keep: bool):
    hidden, weight = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    losses, correct = OutputLayerLoss.apply(hidden, weight, targets, 5, dtype, keep)
    (losses * torch.linspace(0.5, 1.5, len(targets))).sum().backward()
    return losses.detach(), int(correct), hidden.grad, weight.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kept_logits_give_the_recomputed_gradients(dtype, monkeypatch):
    torch.manual_seed(0)
    # 17 rows in chunks of 5, a vocabulary of 2.5 pieces: every loop has a partial tail.
    monkeypatch.setattr(label_loss, "VOCAB_PIECE", 8)
    hidden, weight = torch.randn(17, 12), torch.randn(20, 12)
    targets = torch.randint(0, 20, (17,))
    recomputed = _run(hidden, weight, targets, dtype, keep=False)
    kept = _run(hidden, weight, targets, dtype, keep=True)
    assert torch.equal(kept[0], recomputed[0]) and kept[1] == recomputed[1]
    assert torch.equal(kept[2], recomputed[2]) and torch.equal(kept[3], recomputed[3])
    # And both are the plain cross-entropy's.
    logits = (hidden.to(dtype) @ weight.to(dtype).t()).float()
    plain = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    torch.testing.assert_close(kept[0], plain, rtol=1e-5, atol=1e-5)


def test_logits_over_the_budget_are_recomputed(monkeypatch):
    """Over KEEP_BYTES nothing is kept, and the result is the same."""
    torch.manual_seed(1)
    hidden, weight, targets = torch.randn(6, 4), torch.randn(9, 4), torch.randint(0, 9, (6,))
    seen = []
    backward = OutputLayerLoss.backward

    def spy(ctx, *grads):
        seen.append(ctx.kept is not None)
        return backward(ctx, *grads)

    monkeypatch.setattr(OutputLayerLoss, "backward", staticmethod(spy))
    within = _run(hidden, weight, targets, torch.float32, keep=True)
    monkeypatch.setattr(label_loss, "KEEP_BYTES", 6 * 9 * 4 - 1)
    over = _run(hidden, weight, targets, torch.float32, keep=True)
    assert seen == [True, False]
    assert all(torch.equal(a, b) for a, b in zip(within[2:], over[2:], strict=True))
