import pytest
import torch

from tunesmith.train.loss import labelled_loss


@pytest.fixture(scope="session")
def train_step():
    """train_step(model, batch, dtype=bf16, arena=None): (loss sum, gradients) of one backward,
    activations saved in `arena` when given; the gradients are cleared after."""

    def step(model, batch, dtype=torch.bfloat16, arena=None):
        with arena.saving() if arena else torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
                parts = labelled_loss(model, batch, 1024)
        (parts.loss_sum / parts.n_label_tokens).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        model.zero_grad(set_to_none=True)
        return parts.loss_sum.item(), grads

    return step
