"""An encoder checkpoint with its pooling: the one place that turns text into embeddings.

A sentence-transformers folder says how to pool (``1_Pooling/config.json``), how long inputs may be
(``sentence_bert_config.json``) and whether embeddings are normalised (a ``Normalize`` module); a
plain BERT-family folder gets mean pooling, its position limit and normalisation. Training, eval,
export and the service all embed through `Encoder.embed`, so they cannot disagree.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tunesmith.errors import TunesmithError
from tunesmith.models import resolve_model_path

POOLING_MODES = ("mean", "cls", "max")
DEFAULT_MAX_SEQ_LEN = 512


@dataclass(frozen=True)
class Pooling:
    mode: str = "mean"
    normalize: bool = True
    max_seq_len: int = DEFAULT_MAX_SEQ_LEN


def read_pooling(folder: Path, position_limit: int) -> Pooling:
    """The checkpoint's own pooling settings; mean + normalise for a folder that has none."""
    limit = position_limit
    config = folder / "sentence_bert_config.json"
    if config.is_file():
        limit = min(limit, int(json.loads(config.read_text()).get("max_seq_length") or limit))
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        return Pooling(max_seq_len=limit)
    modules = json.loads(modules_file.read_text())
    normalize = any(m["type"].endswith("Normalize") for m in modules)
    mode = "mean"
    for module in modules:
        if module["type"].endswith("Pooling"):
            pooling = json.loads((folder / module["path"] / "config.json").read_text())
            # sentence-transformers >= 6 writes {"pooling_mode": "mean"}; older versions one flag per mode.
            chosen = (
                [pooling["pooling_mode"]]
                if "pooling_mode" in pooling
                else [m for m in POOLING_MODES if pooling.get(f"pooling_mode_{m}_token" + ("s" if m != "cls" else ""))]
            )
            if len(chosen) != 1 or chosen[0] not in POOLING_MODES:
                raise TunesmithError(f"{folder}: pooling {pooling} is not one of {', '.join(POOLING_MODES)}")
            mode = chosen[0]
    return Pooling(mode, normalize, limit)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """[batch, seq, dim] -> [batch, dim], padding excluded."""
    if mode == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    if mode == "max":
        return hidden.masked_fill(mask == 0, torch.finfo(hidden.dtype).min).amax(dim=1)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


class Encoder:
    """A transformer body (`AutoModel`), its tokenizer and pooling."""

    def __init__(self, model, tokenizer, pooling: Pooling, path: str):
        self.model, self.tokenizer, self.pooling, self.path = model, tokenizer, pooling, path

    def tokenize(self, texts: list[str], max_len: int | None = None) -> dict[str, torch.Tensor]:
        limit = min(max_len or self.pooling.max_seq_len, self.pooling.max_seq_len)
        return self.tokenizer(texts, truncation=True, max_length=limit, padding=True, return_tensors="pt")

    def embed(self, batch: dict[str, torch.Tensor], body=None) -> torch.Tensor:
        """Pooled (and, if the checkpoint says so, unit-length) embeddings of a tokenized batch.

        `body` replaces the transformer (a PEFT-wrapped copy while training)."""
        device = next(self.model.parameters()).device
        batch = {k: v.to(device) for k, v in batch.items()}
        hidden = (body or self.model)(**batch).last_hidden_state
        pooled = pool(hidden, batch["attention_mask"], self.pooling.mode)
        return torch.nn.functional.normalize(pooled, dim=-1) if self.pooling.normalize else pooled

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 64, progress: str | None = None) -> np.ndarray:
        """Embeddings in input order, float32; batches are sorted by length so little is padding."""
        from tunesmith.progress import tracked

        was_training = self.model.training
        self.model.eval()
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
        out = np.zeros((len(texts), self.model.config.hidden_size), dtype=np.float32)
        starts = list(range(0, len(order), batch_size))
        for start in tracked(starts, progress) if progress else starts:
            chosen = order[start : start + batch_size]
            out[chosen] = self.embed(self.tokenize([texts[i] for i in chosen])).float().cpu().numpy()
        self.model.train(was_training)
        return out


def load_encoder(name_or_path: str) -> Encoder:
    """A built-in encoder name, a sentence-transformers / BERT-family folder, or an encoder run folder."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from tunesmith.models import _quiet_transformers

    _quiet_transformers()
    path = resolve_model_path(name_or_path)
    config = AutoConfig.from_pretrained(path)
    if any(a.endswith("ForCausalLM") for a in config.architectures or []):
        raise TunesmithError(f"{name_or_path!r} is a decoder ({config.model_type}); encoder objectives need an encoder")
    model = AutoModel.from_pretrained(path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path)
    limit = getattr(config, "max_position_embeddings", DEFAULT_MAX_SEQ_LEN)
    return Encoder(model, tokenizer, read_pooling(Path(path), limit), path)
