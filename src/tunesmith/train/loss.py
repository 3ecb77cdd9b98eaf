"""The loss owns the output layer.

Only positions that carry a label go through lm_head, in chunks, and each chunk's logits are
recomputed in backward instead of kept: [batch, seq, vocab] logits are never built, and neither
are their softmax or its gradient for more than a chunk of rows and a piece of the vocabulary. For SmolLM2 the
49,152-row output projection is ~21% of forward FLOPs, and completions are a minority of tokens,
so skipping unlabelled positions saves real time as well as memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tunesmith.data.batching import Batch
from tunesmith.data.tokenize import IGNORE_INDEX
from tunesmith.kernels import attention
from tunesmith.precision import active_dtype


@dataclass
class LossParts:
    loss_sum: torch.Tensor  # summed cross-entropy over label tokens (differentiable)
    n_label_tokens: int
    n_correct: torch.Tensor  # argmax == label, for token accuracy (no grad)


# Rows of lm_head cast and multiplied at a time: the float32 weight is never copied whole.
VOCAB_PIECE = 8192


def _in_piece(targets: torch.Tensor, start: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(which targets fall in vocabulary [start, start + width), their column there, clamped)."""
    inside = (targets >= start) & (targets < start + width)
    return inside, (targets - start).clamp_(0, width - 1)


class _OutputLayerLoss(torch.autograd.Function):
    """Per-row cross-entropy of `hidden @ weight^T` against `targets`, keeping no logits.

    The logits are made a piece of the vocabulary and a chunk of rows at a time: forward keeps a
    running log-sum-exp (and argmax, and target logit) per row, backward recomputes each piece's
    logits and turns them into softmax - one-hot in place. At most [chunk_size, VOCAB_PIECE] floats
    and VOCAB_PIECE rows of the weight in the compute dtype exist at any time, where a plain
    cross-entropy would hold [rows, vocab] logits, their softmax and its gradient, and autocast a
    bf16 copy of the whole (tied, float32) weight: ~200 MB for 300 labels of a 49k vocabulary.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_size: int, dtype: torch.dtype):
        hidden = hidden.to(dtype)
        rows, device = len(targets), hidden.device
        top = torch.full((rows,), float("-inf"), device=device)
        total = torch.zeros(rows, device=device)
        best = torch.full((rows,), float("-inf"), device=device)
        best_index = torch.zeros(rows, dtype=torch.long, device=device)
        target_logit = torch.zeros(rows, device=device)
        for first in range(0, weight.shape[0], VOCAB_PIECE):
            cast = weight[first : first + VOCAB_PIECE].to(dtype)
            for start in range(0, rows, chunk_size):
                piece = slice(start, start + chunk_size)
                logits = (hidden[piece] @ cast.t()).float()
                value, index = logits.max(-1)
                best_index[piece] = torch.where(value > best[piece], index + first, best_index[piece])
                best[piece] = torch.maximum(best[piece], value)
                inside, column = _in_piece(targets[piece], first, logits.shape[1])
                target_logit[piece] += logits.gather(1, column[:, None]).squeeze(1) * inside
                new_top = torch.maximum(top[piece], value)
                rescale = (top[piece] - new_top).exp_()
                total[piece] = total[piece] * rescale + logits.sub_(new_top[:, None]).exp_().sum(-1)
                top[piece] = new_top
        lse = top + total.log()
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.chunk_size = chunk_size
        correct = (best_index == targets).sum()
        ctx.mark_non_differentiable(correct)
        return lse - target_logit, correct

    @staticmethod
    def backward(ctx, grad_losses, _):
        hidden, weight, targets, lse = ctx.saved_tensors
        # Summed over vocabulary pieces in float32, as one matmul over the whole vocabulary would.
        grad_hidden = torch.zeros(hidden.shape, device=hidden.device) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros_like(weight) if ctx.needs_input_grad[1] else None
        for first in range(0, weight.shape[0], VOCAB_PIECE):
            cast = weight[first : first + VOCAB_PIECE].to(hidden.dtype)
            for start in range(0, len(targets), ctx.chunk_size):
                piece = slice(start, start + ctx.chunk_size)
                grad_logits = (hidden[piece] @ cast.t()).float().sub_(lse[piece, None]).exp_()
                inside, column = _in_piece(targets[piece], first, grad_logits.shape[1])
                grad_logits.scatter_add_(1, column[:, None], -inside[:, None].float())
                grad_logits = grad_logits.mul_(grad_losses[piece, None]).to(hidden.dtype)
                if grad_hidden is not None:
                    grad_hidden[piece] += grad_logits @ cast
                if grad_weight is not None:
                    grad_weight[first : first + VOCAB_PIECE] += grad_logits.t() @ hidden[piece]
        return None if grad_hidden is None else grad_hidden.to(hidden.dtype), grad_weight, None, None, None


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


def label_token_losses(model, batch: Batch, chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(cross-entropy of every label token, in row order [n_label_tokens]; argmax hits)."""
    hidden = hidden_states(model, batch)
    _, head = output_layer(model)
    keep = batch.targets != IGNORE_INDEX
    return _OutputLayerLoss.apply(hidden[keep], head.weight, batch.targets[keep], chunk_size, active_dtype(hidden))


def labelled_loss(model, batch: Batch, chunk_size: int) -> LossParts:
    losses, correct = label_token_losses(model, batch, chunk_size)
    return LossParts(losses.sum(), len(losses), correct)
