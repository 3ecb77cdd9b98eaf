"""The label-only output-layer loss: cross-entropy of `hidden @ weight^T` for the label rows alone,
keeping logits only while they are small (see OutputLayerLoss)."""

from __future__ import annotations

import torch

# Rows of lm_head cast and multiplied at a time: the float32 weight is never copied whole.
VOCAB_PIECE = 8192
# Logits up to this size are kept for backward instead of recomputed. An E2E micro-batch's ~250
# labels x 49k vocabulary are ~50 MB in float32; recomputing them took ~60 ms of a ~3 s float32
# LoRA step on SmolLM2-135M (2 cores).
KEEP_BYTES = 64 * 2**20


def output_layer(model):
    """(decoder, lm_head) of a causal LM, seen through a PEFT wrapper if there is one."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder(), base.get_output_embeddings()


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

    With `keep` (a pass that will run backward) and logits of at most KEEP_BYTES in the compute
    dtype, forward writes them into one tensor that backward reads instead of recomputing: the
    same values, the matmul done once.

    `added` = (ids, rows), the added token rows of kernels/token_rows.py, stand in for those rows of
    `weight` and get the gradient they would have there: the weight with them written in is never built.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_size: int, dtype: torch.dtype, keep: bool, softcap=None, *added):
        hidden = hidden.to(dtype)
        override = tuple(added) or None
        kept = kept_logits(keep, len(targets), weight.shape[0], hidden)
        top, total, target_logit, _, best_index = vocabulary_stats(
            hidden, weight, targets, chunk_size, kept, softcap=softcap, override=override
        )
        lse = top + total.log()
        ctx.save_for_backward(hidden, weight, targets, lse, *added)
        # An attribute, not a saved tensor: the activation arena would copy it (kernels/arena.py).
        ctx.chunk_size, ctx.kept, ctx.softcap = chunk_size, kept, softcap
        correct = (best_index == targets).sum()
        ctx.mark_non_differentiable(correct)
        return lse - target_logit, correct

    @staticmethod
    def backward(ctx, grad_losses, _):
        hidden, weight, targets, lse, *added = ctx.saved_tensors
        override = tuple(added) or None
        wanted = (*ctx.needs_input_grad[:2], override is not None and ctx.needs_input_grad[8])
        grad_hidden, grad_weight, grad_rows = vocabulary_grads(
            hidden, weight, targets, lse, grad_losses, ctx.chunk_size, ctx.kept, wanted, ctx.softcap, override=override
        )
        ctx.kept = None
        grad_hidden = None if grad_hidden is None else grad_hidden.to(hidden.dtype)
        return grad_hidden, grad_weight, None, None, None, None, None, *((None, grad_rows) if added else ())


def kept_logits(keep: bool, rows: int, vocab: int, hidden: torch.Tensor) -> torch.Tensor | None:
    """A [rows, vocab] buffer for the logits backward will read, where `keep` and KEEP_BYTES allow."""
    if keep and rows * vocab * hidden.element_size() <= KEEP_BYTES:
        return torch.empty((rows, vocab), dtype=hidden.dtype, device=hidden.device)
    return None


def capped(logits: torch.Tensor, softcap: float | None) -> torch.Tensor:
    """The final logits soft-capped as Gemma 2 does (softcap * tanh(logits / softcap)), in place."""
    return logits if softcap is None else logits.div_(softcap).tanh_().mul_(softcap)


def _piece(weight, first: int, dtype: torch.dtype, override) -> tuple[torch.Tensor, tuple | None]:
    """Rows [first, first + VOCAB_PIECE) of `weight` in `dtype`, with the `override` rows
    (index, values) that fall there written in; and (which of them, their rows in the piece)."""
    cast = weight[first : first + VOCAB_PIECE]
    if override is not None:
        index, values = override
        inside = (index >= first) & (index < first + cast.shape[0])
        if inside.any():
            cast = cast.to(dtype, copy=True)
            at = index[inside] - first
            cast[at] = values[inside].to(dtype)
            return cast, (inside, at)
    return cast.to(dtype), None


def vocabulary_stats(
    hidden, weight, targets, chunk_size: int, kept, offset: int = 0, softcap: float | None = None, override=None
):
    """Per row of `hidden`, over the vocabulary rows `weight` holds (ids `offset` onwards): the
    largest logit, the sum of exp(logit - largest), the target's logit (0 where the target is not
    among them), and the best logit with its id (the lowest id on ties). Fills `kept` if given, with
    the logits before any `softcap`. `override`: (ids, rows) standing in for those rows of `weight`."""
    rows, device = len(targets), hidden.device
    top = torch.full((rows,), float("-inf"), device=device)
    total = torch.zeros(rows, device=device)
    best = torch.full((rows,), float("-inf"), device=device)
    best_index = torch.zeros(rows, dtype=torch.long, device=device)
    target_logit = torch.zeros(rows, device=device)
    for first in range(0, weight.shape[0], VOCAB_PIECE):
        cast, _ = _piece(weight, first, hidden.dtype, override)
        for start in range(0, rows, chunk_size):
            piece = slice(start, start + chunk_size)
            logits = hidden[piece] @ cast.t()
            if kept is not None:
                kept[piece, first : first + logits.shape[1]] = logits
            logits = capped(logits.float(), softcap)
            value, index = logits.max(-1)
            best_index[piece] = torch.where(value > best[piece], index + first + offset, best_index[piece])
            best[piece] = torch.maximum(best[piece], value)
            inside, column = _in_piece(targets[piece], first + offset, logits.shape[1])
            target_logit[piece] += logits.gather(1, column[:, None]).squeeze(1) * inside
            new_top = torch.maximum(top[piece], value)
            rescale = (top[piece] - new_top).exp_()
            total[piece] = total[piece] * rescale + logits.sub_(new_top[:, None]).exp_().sum(-1)
            top[piece] = new_top
    return top, total, target_logit, best, best_index


def vocabulary_grads(
    hidden,
    weight,
    targets,
    lse,
    grad_losses,
    chunk_size: int,
    kept,
    wanted,
    softcap=None,
    offset: int = 0,
    override=None,
):
    """(d loss / d hidden in float32, d loss / d weight) for the vocabulary rows `weight` holds,
    given each row's log-sum-exp over the whole vocabulary, and with an `override` (ids, rows) the
    gradient of those rows (in place of theirs in d loss / d weight); None where `wanted` says so
    (hidden, weight[, rows])."""
    # Summed over vocabulary pieces in float32, as one matmul over the whole vocabulary would.
    grad_hidden = torch.zeros(hidden.shape, device=hidden.device) if wanted[0] else None
    grad_weight = torch.zeros_like(weight) if wanted[1] else None
    grad_rows = torch.zeros_like(override[1]) if override is not None and len(wanted) > 2 and wanted[2] else None
    for first in range(0, weight.shape[0], VOCAB_PIECE):
        cast, overridden = _piece(weight, first, hidden.dtype, override)
        for start in range(0, len(targets), chunk_size):
            piece = slice(start, start + chunk_size)
            if kept is None:
                logits = hidden[piece] @ cast.t()
            else:
                logits = kept[piece, first : first + cast.shape[0]]
            logits = capped(logits.float(), softcap)
            grad_logits = logits.sub(lse[piece, None]).exp_()
            inside, column = _in_piece(targets[piece], first + offset, grad_logits.shape[1])
            grad_logits.scatter_add_(1, column[:, None], -inside[:, None].float())
            grad_logits = grad_logits.mul_(grad_losses[piece, None])
            if softcap is not None:  # d capped / d logit = 1 - tanh^2
                grad_logits.mul_(logits.div_(softcap).square_().neg_().add_(1))
            grad_logits = grad_logits.to(hidden.dtype)
            if grad_hidden is not None:
                grad_hidden[piece] += grad_logits @ cast
            if grad_weight is not None:
                grad_weight[first : first + VOCAB_PIECE] += grad_logits.t() @ hidden[piece]
            if grad_rows is not None and overridden is not None:
                inside, at = overridden
                grad_rows[inside] += grad_logits[:, at].t() @ hidden[piece]
    return grad_hidden, grad_weight, grad_rows
