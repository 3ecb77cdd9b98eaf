"""The loss owns the output layer.

With the fast paths (`train.fast_paths`, the default) only positions that carry a label go
through lm_head, in chunks, recomputed in backward (kernels/label_loss.py): [batch, seq, vocab]
logits are never built. For SmolLM2 the 49,152-row output projection is ~21% of forward FLOPs, and
completions are a minority of tokens, so skipping unlabelled positions saves time as well as
memory. Without them, it is transformers' way: logits at every position, then cross-entropy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tunesmith.data.batching import Batch
from tunesmith.data.tokenize import IGNORE_INDEX
from tunesmith.kernels import attention
from tunesmith.kernels.label_loss import OutputLayerLoss, output_layer
from tunesmith.kernels.token_rows import added_rows
from tunesmith.precision import active_dtype
from tunesmith.train.vocab_shard import is_vocab_sharded, sharded_label_losses


@dataclass
class LossParts:
    loss_sum: torch.Tensor  # summed cross-entropy over label tokens (differentiable)
    n_label_tokens: int
    n_correct: torch.Tensor  # argmax == label, for token accuracy (no grad)


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
        inputs["segments"] = attention.segments(batch.lengths, batch.input_ids.device, parents=batch.parents)
    return decoder(**inputs).last_hidden_state


def final_softcap(model) -> float | None:
    """The soft-cap transformers applies to the output logits (Gemma 2's final_logit_softcapping), if any."""
    return getattr(output_layer(model)[0].config, "final_logit_softcapping", None)


def label_token_losses(model, batch: Batch, chunk_size: int, fast: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(cross-entropy of every label token, in row order [n_label_tokens]; argmax hits)."""
    hidden = hidden_states(model, batch)
    _, head = output_layer(model)
    keep = batch.targets != IGNORE_INDEX
    targets = batch.targets[keep]
    softcap = final_softcap(model)
    if fast:
        dtype, grad = active_dtype(hidden), torch.is_grad_enabled()
        rows = added_rows(head)  # added token rows over the table: passed beside it, never written into a copy
        if rows is not None:
            return OutputLayerLoss.apply(
                hidden[keep], rows.table, targets, chunk_size, dtype, grad, softcap, rows.index, rows.values
            )
        losses = sharded_label_losses if is_vocab_sharded(head.weight) else OutputLayerLoss.apply
        return losses(hidden[keep], head.weight, targets, chunk_size, dtype, grad, softcap)
    logits = head(hidden).float()[keep]
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    return F.cross_entropy(logits, targets, reduction="none"), (logits.detach().argmax(-1) == targets).sum()


def labelled_loss(model, batch: Batch, chunk_size: int, fast: bool = True) -> LossParts:
    losses, correct = label_token_losses(model, batch, chunk_size, fast)
    return LossParts(losses.sum(), len(losses), correct)
