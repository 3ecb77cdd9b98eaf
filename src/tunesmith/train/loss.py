"""The loss owns the output layer.

Only positions that carry a label go through lm_head, in chunks, and each chunk's logits are
recomputed in backward instead of kept: [batch, seq, vocab] logits are never built. For SmolLM2 the
49,152-row output projection is ~21% of forward FLOPs, and completions are a minority of tokens,
so skipping unlabelled positions saves real time as well as memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from tunesmith import attention
from tunesmith.data.batching import Batch
from tunesmith.data.tokenize import IGNORE_INDEX


@dataclass
class LossParts:
    loss_sum: torch.Tensor  # summed cross-entropy over label tokens (differentiable)
    n_label_tokens: int
    n_correct: torch.Tensor  # argmax == label, for token accuracy (no grad)


def _chunk_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor):
    logits = (hidden @ weight.t()).float()
    loss = F.cross_entropy(logits, targets, reduction="sum")
    correct = (logits.detach().argmax(-1) == targets).sum()
    return loss, correct


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
    selected = hidden[keep]
    targets = batch.targets[keep]
    loss_sum = hidden.new_zeros((), dtype=torch.float32)
    correct = torch.zeros((), dtype=torch.long)
    for start in range(0, targets.numel(), chunk_size):
        piece = slice(start, start + chunk_size)
        if torch.is_grad_enabled():
            loss, hits = checkpoint(_chunk_loss, selected[piece], head.weight, targets[piece], use_reentrant=False)
        else:
            loss, hits = _chunk_loss(selected[piece], head.weight, targets[piece])
        loss_sum = loss_sum + loss
        correct = correct + hits
    return LossParts(loss_sum, int(targets.numel()), correct)
