"""An encoder checkpoint with its pooling: the one place that turns text into embeddings.

A sentence-transformers folder says how to pool (``1_Pooling/config.json``), how long inputs may be
(``sentence_bert_config.json``) and whether embeddings are normalised (a ``Normalize`` module); a
plain BERT-family folder gets mean pooling, its position limit and normalisation. Training, eval,
export and the service all embed through `Encoder.embed`, so they cannot disagree.

BERT models run packed batches: all texts of a batch back to back in one row, no padding, each
attending only to itself (kernels/attention.py), pooled per text. The projections and MLPs, nearly
all of the compute, then see real tokens only, and attention keeps no [text, text] matrices.
Attention dropout cannot be applied to the packed kernel: a model that trains with it gets padded
batches, as every model type this list does not name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from tunesmith.errors import TunesmithError
from tunesmith.kernels import attention
from tunesmith.models import resolve_model_path

POOLING_MODES = ("mean", "cls", "max")
DEFAULT_MAX_SEQ_LEN = 512
# Model types whose attention goes through transformers' AttentionInterface and whose position ids
# count from 0 in each text (RoBERTa's start after the padding index), checked by a packed-vs-padded test.
PACKED_MODEL_TYPES = ("bert",)


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


def pool_packed(hidden: torch.Tensor, lengths: torch.Tensor, mode: str) -> torch.Tensor:
    """[tokens, dim] of texts back to back -> [texts, dim]."""
    if mode == "cls":
        return hidden[lengths.cumsum(0) - lengths]
    owner = torch.repeat_interleave(torch.arange(len(lengths), device=hidden.device), lengths)
    if mode == "max":
        empty = hidden.new_full((len(lengths), hidden.shape[1]), torch.finfo(hidden.dtype).min)
        return empty.scatter_reduce(0, owner[:, None].expand_as(hidden), hidden, "amax")
    sums = hidden.new_zeros(len(lengths), hidden.shape[1]).index_add_(0, owner, hidden)
    return sums / lengths[:, None].to(hidden.dtype)


def set_dropout(model: torch.nn.Module, probability: float) -> None:
    """Every dropout of the model (hidden, attention, embeddings) and its config, so a save keeps it."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = probability
    for key in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
        if hasattr(model.config, key):
            setattr(model.config, key, probability)


class Encoder:
    """A transformer body (`AutoModel`), its tokenizer and pooling."""

    def __init__(self, model, tokenizer, pooling: Pooling, path: str):
        self.model, self.tokenizer, self.pooling, self.path = model, tokenizer, pooling, path

    def _limit(self, max_len: int | None) -> int:
        return min(max_len or self.pooling.max_seq_len, self.pooling.max_seq_len)

    def tokenize(self, texts: list[str], max_len: int | None = None) -> dict[str, torch.Tensor]:
        """A padded batch: what any model type takes."""
        limit = self._limit(max_len)
        return self.tokenizer(texts, truncation=True, max_length=limit, padding=True, return_tensors="pt")

    def packs(self) -> bool:
        """Whether batches go packed: a packed model type, and no attention dropout while training."""
        config = self.model.config
        dropout = self.model.training and getattr(config, "attention_probs_dropout_prob", 0.0) > 0
        return config._attn_implementation == attention.NAME and not dropout

    def batch(self, texts: list[str], max_len: int | None = None) -> dict:
        """The texts as the model runs them best: packed where it can (see the module doc), else padded."""
        if not self.packs():
            return self.tokenize(texts, max_len)
        ids = self.tokenizer(texts, truncation=True, max_length=self._limit(max_len)).input_ids
        lengths = torch.tensor([len(x) for x in ids])
        starts = torch.repeat_interleave(lengths.cumsum(0) - lengths, lengths)
        positions = torch.arange(int(lengths.sum())) - starts
        return {
            "input_ids": torch.tensor([t for x in ids for t in x])[None],
            "position_ids": positions[None],
            "lengths": lengths,
        }

    def _hidden(self, batch: dict, body) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(last hidden state, text lengths, attention mask): [texts, seq, dim] and the mask for a
        padded batch, [tokens, dim] back to back and None for a packed one."""
        device = next(self.model.parameters()).device
        batch = {k: v.to(device) for k, v in batch.items()}
        if "lengths" not in batch:
            hidden = (body or self.model)(**batch).last_hidden_state
            return hidden, batch["attention_mask"].sum(1), batch["attention_mask"]
        lengths = batch.pop("lengths")
        segments = attention.segments(lengths.tolist(), device, causal=False)
        return (body or self.model)(**batch, segments=segments).last_hidden_state[0], lengths, None

    def pooled(self, batch: dict, body=None) -> torch.Tensor:
        """[texts, dim] pooled as the checkpoint says, not normalised. `body` replaces the
        transformer (a PEFT-wrapped copy while training)."""
        hidden, lengths, mask = self._hidden(batch, body)
        if mask is not None:
            return pool(hidden, mask, self.pooling.mode)
        return pool_packed(hidden, lengths, self.pooling.mode)

    def embed(self, batch: dict, body=None) -> torch.Tensor:
        """Pooled (and, if the checkpoint says so, unit-length) embeddings of a batch from `batch()`."""
        pooled = self.pooled(batch, body)
        return torch.nn.functional.normalize(pooled, dim=-1) if self.pooling.normalize else pooled

    def token_embeddings(self, batch: dict, body=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(every token's unit-length embedding, [tokens, dim] texts back to back; each text's length):
        what late interaction (`objectives.maxsim_scores`) scores."""
        hidden, lengths, mask = self._hidden(batch, body)
        tokens = hidden if mask is None else hidden[mask.bool()]
        return torch.nn.functional.normalize(tokens, dim=-1), lengths

    def _sorted_batches(self, texts: list[str], batch_size: int, progress: str | None):
        """(chosen indices, batch) in eval mode, longest texts first so batches hold little padding."""
        from tunesmith.progress import tracked

        was_training = self.model.training
        self.model.eval()
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
        starts = list(range(0, len(order), batch_size))
        try:
            for start in tracked(starts, progress) if progress else starts:
                chosen = order[start : start + batch_size]
                yield chosen, self.batch([texts[i] for i in chosen])
        finally:
            self.model.train(was_training)

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 64, progress: str | None = None) -> np.ndarray:
        """Embeddings in input order, float32."""
        out = np.zeros((len(texts), self.model.config.hidden_size), dtype=np.float32)
        for chosen, batch in self._sorted_batches(texts, batch_size, progress):
            out[chosen] = self.embed(batch).float().cpu().numpy()
        return out

    @torch.no_grad()
    def encode_tokens(
        self, texts: list[str], batch_size: int = 64, progress: str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`token_embeddings` of all texts in input order, float32 on the CPU."""
        per_text: list[torch.Tensor] = [torch.empty(0)] * len(texts)
        for chosen, batch in self._sorted_batches(texts, batch_size, progress):
            tokens, lengths = self.token_embeddings(batch)
            for i, piece in zip(chosen, tokens.float().cpu().split(lengths.tolist()), strict=True):
                per_text[i] = piece
        return torch.cat(per_text), torch.tensor([len(t) for t in per_text])


def load_encoder(name_or_path: str, max_seq_len: int | None = None) -> Encoder:
    """A built-in encoder name, a sentence-transformers / BERT-family folder, or an encoder run folder;
    `max_seq_len` replaces the checkpoint's own limit."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from tunesmith.models import quiet_transformers

    quiet_transformers()
    path = resolve_model_path(name_or_path)
    config = AutoConfig.from_pretrained(path)
    if any(a.endswith("ForCausalLM") for a in config.architectures or []):
        raise TunesmithError(f"{name_or_path!r} is a decoder ({config.model_type}); encoder objectives need an encoder")
    model = AutoModel.from_pretrained(path, dtype=torch.float32)
    if config.model_type in PACKED_MODEL_TYPES:
        model.set_attn_implementation(attention.NAME)  # SDPA's where a batch is padded
    tokenizer = AutoTokenizer.from_pretrained(path)
    limit = getattr(config, "max_position_embeddings", DEFAULT_MAX_SEQ_LEN)
    pooling = read_pooling(Path(path), limit)
    if max_seq_len is not None:
        if max_seq_len > limit:
            raise TunesmithError(
                f"encoder.max_seq_len {max_seq_len} is more than {name_or_path} has positions for ({limit})"
            )
        pooling = replace(pooling, max_seq_len=max_seq_len)
    return Encoder(model, tokenizer, pooling, path)
