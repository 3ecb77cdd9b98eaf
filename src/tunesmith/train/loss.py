"""The loss owns the output layer.

Only positions that carry a label go through lm_head, in chunks, and each chunk's logits are
recomputed in backward instead of kept: [batch, seq, vocab] logits are never built, and neither
are their softmax or its gradient for more than one chunk at a time. For SmolLM2 the
49,152-row output projection is ~21% of forward FLOPs, and completions are a minority of tokens,
so skipping unlabelled positions saves real time as well as memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tunesmith import attention
from tunesmith.data.batching import Batch
from tunesmith.data.tokenize import IGNORE_INDEX


@dataclass
class LossParts:
    loss_sum: torch.Tensor  # summed cross-entropy over label tokens (differentiable)
    n_label_tokens: int
    n_correct: torch.Tensor  # argmax == label, for token accuracy (no grad)


class _OutputLayerLoss(torch.autograd.Function):
    """Summed cross-entropy of `hidden @ weight^T` against `targets`, a chunk of rows at a time.

    Keeps no logits: forward saves each row's log-sum-exp, backward recomputes a chunk's logits
    and turns them into softmax - one-hot in place. At most one chunk's [rows, vocab] floats
    exist at any time, and `weight` (the tied embedding, float32) is cast to the compute dtype
    once per pass rather than once per chunk.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_size: int, dtype: torch.dtype):
        hidden, cast = hidden.to(dtype), weight.to(dtype)
        lse = torch.empty(len(targets), dtype=torch.float32, device=hidden.device)
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        correct = torch.zeros((), dtype=torch.long, device=hidden.device)
        for start in range(0, len(targets), chunk_size):
            piece = slice(start, start + chunk_size)
            logits = (hidden[piece] @ cast.t()).float()
            correct += (logits.argmax(-1) == targets[piece]).sum()
            target_logits = logits.gather(1, targets[piece, None]).squeeze(1)
            # log-sum-exp in place: no second [rows, vocab] buffer.
            top = logits.amax(-1, keepdim=True)
            lse[piece] = logits.sub_(top).exp_().sum(-1).log_().add_(top.squeeze(1))
            loss += (lse[piece] - target_logits).sum()
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.chunk_size = chunk_size
        ctx.mark_non_differentiable(correct)
        return loss, correct

    @staticmethod
    def backward(ctx, grad_loss, _):
        hidden, weight, targets, lse = ctx.saved_tensors
        cast = weight.to(hidden.dtype)
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros_like(weight) if ctx.needs_input_grad[1] else None
        for start in range(0, len(targets), ctx.chunk_size):
            piece = slice(start, start + ctx.chunk_size)
            grad_logits = (hidden[piece] @ cast.t()).float().sub_(lse[piece, None]).exp_()
            rows = torch.arange(len(grad_logits), device=grad_logits.device)
            grad_logits[rows, targets[piece]] -= 1
            grad_logits = grad_logits.mul_(grad_loss).to(hidden.dtype)
            if grad_hidden is not None:
                torch.mm(grad_logits, cast, out=grad_hidden[piece])
            if grad_weight is not None:
                grad_weight += grad_logits.t() @ hidden[piece]
        return grad_hidden, grad_weight, None, None, None


def output_layer(model):
    """(decoder, lm_head) of a causal LM, seen through a PEFT wrapper if there is one."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder(), base.get_output_embeddings()


def hidden_states(model, batch: Batch) -> torch.Tensor:
    decoder, _ = output_layer(model)
    inputs = {"input_ids": batch.input_ids, "position_ids": batch.position_ids, "use_cache": False}
    if batch.lengths is None:
        inputs["attention_mask"] = batch.attention_mask
    else:
        if decoder.config._attn_implementation != attention.NAME:
            raise ValueError(f"a packed batch needs the model's attention set to {attention.NAME!r}")
        # An all-ones mask tells transformers there is nothing to mask, so it builds no block mask
        # from the restarting positions; the packed attention walls the examples off itself.
        inputs["attention_mask"] = torch.ones_like(batch.input_ids)
        inputs["segments"] = attention.segments(batch.lengths, batch.input_ids.device)
    return decoder(**inputs).last_hidden_state


def labelled_loss(model, batch: Batch, chunk_size: int) -> LossParts:
    hidden = hidden_states(model, batch)
    _, head = output_layer(model)
    keep = batch.targets != IGNORE_INDEX
    device = hidden.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
    targets = batch.targets[keep]
    loss_sum, correct = _OutputLayerLoss.apply(hidden[keep], head.weight, targets, chunk_size, dtype)
    return LossParts(loss_sum, int(targets.numel()), correct)
