"""The label-only output-layer loss: cross-entropy of `hidden @ weight^T` for the label rows alone,
keeping no logits (see OutputLayerLoss)."""

from __future__ import annotations

import torch

# Rows of lm_head cast and multiplied at a time: the float32 weight is never copied whole.
VOCAB_PIECE = 8192


def _in_piece(targets: torch.Tensor, start: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(which targets fall in vocabulary [start, start + width), their column there, clamped)."""
    inside = (targets >= start) & (targets < start + width)
    return inside, (targets - start).clamp_(0, width - 1)


class OutputLayerLoss(torch.autograd.Function):
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
