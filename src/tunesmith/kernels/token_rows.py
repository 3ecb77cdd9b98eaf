"""Added token rows (PEFT's trainable tokens) looked up and trained without a copy of their table.

PEFT's TrainableTokensLayer writes the trained rows into a copy of the whole table on every forward
(`index_copy`), for the input embedding and again for a tied output layer, and the gradient of each
copy is as large: for the two ChatML rows a base Gemma 3 gains, four transient 671 MB tensors a step
(262,144 x 640 in float32). Here the lookup reads the frozen table and puts the trained rows where
an added id occurs, and the label-only loss (kernels/label_loss.py) takes the rows as an override of
its vocabulary pieces: the same values and gradients, no copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tunesmith.kernels import with_mixin


@dataclass(frozen=True)
class AddedRows:
    """Rows `index` of the frozen `table` stand replaced by `values`, the trained parameter."""

    table: torch.Tensor
    index: torch.Tensor
    values: torch.Tensor


def added_rows(module) -> AddedRows | None:
    """The trained rows `module` (a PEFT TrainableTokensWrapper, or its layer) puts over its table
    when one adapter is active and unmerged; None otherwise (PEFT's own forward then applies)."""
    from peft.tuners.trainable_tokens.layer import TrainableTokensLayer

    layer = getattr(module, "token_adapter", module)
    if not isinstance(layer, TrainableTokensLayer) or layer.merged or layer.disable_adapters:
        return None
    active = layer.active_adapters
    if len(active) != 1 or active[0] not in layer.token_indices:
        return None
    table = layer.get_base_layer().weight
    index = torch.tensor(layer.token_indices[active[0]], device=table.device)
    return AddedRows(table, index, layer.trainable_tokens_delta[active[0]])


class _LeanLookup:
    """A TrainableTokensLayer over an embedding that looks up the frozen table, then the added rows."""

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        rows = added_rows(self)
        base = self.get_base_layer()
        if rows is None or not isinstance(base, torch.nn.Embedding):
            return super().forward(x, *args, **kwargs)
        out = base(x)  # a scaled embedding (Gemma's) applies its scale here
        hit = x.unsqueeze(-1) == rows.index
        # Computed for every position, so the rows get a (zero) gradient in every step, as PEFT's do:
        # the optimizer's moments then move them alike.
        picked = F.embedding(hit.long().argmax(-1), rows.values.to(base.weight.dtype))
        scale = self._get_embed_scale()
        if scale is not None:
            picked = picked * scale.to(picked.dtype)
        return torch.where(hit.any(-1, keepdim=True), picked, out)


def lean_token_rows(model: torch.nn.Module) -> int:
    """Route the input lookups of added token rows through _LeanLookup; returns how many layers now do."""
    from peft.tuners.trainable_tokens.layer import TrainableTokensLayer

    layers = [
        m
        for m in model.modules()
        if isinstance(m, TrainableTokensLayer) and isinstance(m.get_base_layer(), torch.nn.Embedding)
    ]
    for layer in layers:
        layer.__class__ = with_mixin("Lean", _LeanLookup, type(layer))
    return len(layers)
