"""What each encoder objective trains on: its examples, its head, and the loss of a batch.

A task turns example indices into a `Prepared` batch (tokenized, masked, with its loss count) and
that batch into a summed loss, so the loop in `encoders/recipe.py` is the same for all three.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from tunesmith.config import Config
from tunesmith.encoders.data import Pair, read_labelled, read_pairs, read_texts
from tunesmith.encoders.model import Encoder
from tunesmith.encoders.objectives import (
    Temperature,
    contrastive_loss,
    cosine_scores,
    mask_tokens,
    maxsim_scores,
    mlm_head,
    mlm_loss,
)
from tunesmith.errors import TunesmithError


@dataclass
class Prepared:
    inputs: dict  # what the loss needs, already tokenized
    count: int  # loss terms in this batch (queries, masked tokens, texts): the step normalises by their sum
    tokens: int  # real (non-padding) tokens run through the body


@runtime_checkable
class EncoderTask(Protocol):
    """What the encoder recipe asks of a task (ContrastiveTask, MaskedLMTask, ClassificationTask):
    the encoder's counterpart of train.objective.Objective."""

    train: list  # training items, in the task's own form
    validation: list
    head: torch.nn.Module  # trained beside the body (a temperature, the MLM head, a classifier)

    def summary(self) -> str:
        """One line on the data, for the progress output."""

    def prepare(self, items: list, generator: torch.Generator) -> Prepared:
        """One micro-batch of `items`; any randomness (masking) drawn from `generator`."""

    def loss_sum(self, body, inputs: dict) -> tuple[torch.Tensor, int]:
        """(the loss summed over the batch's loss terms, how many of them are right)."""


def _tokens(batch: dict) -> int:
    return int(batch["lengths"].sum() if "lengths" in batch else batch["attention_mask"].sum())


def split_off(items: list, fraction: float, seed: int) -> tuple[list, list]:
    """(train, validation): a seeded random `fraction` of the items held out."""
    if fraction <= 0 or len(items) < 2:
        return items, []
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    cut = max(1, round(len(items) * fraction))
    held = set(order[:cut])
    return [x for i, x in enumerate(items) if i not in held], [x for i, x in enumerate(items) if i in held]


class ContrastiveTask:
    """(query, positive[, negatives]) with in-batch negatives; hard negatives optionally mined with BM25;
    scored by pooled cosine or late interaction (`encoder.scoring`)."""

    def __init__(self, cfg: Config, encoder: Encoder):
        self.encoder, self.max_len, self.scoring = encoder, cfg.data.max_seq_len, cfg.encoder.scoring
        train = read_pairs(cfg.data.train, "train")
        if cfg.data.validation:
            validation = read_pairs(cfg.data.validation, "validation")
        else:
            train, validation = split_off(train, cfg.data.val_fraction, cfg.train.seed)
        self.train, self.validation = train, validation
        self.negatives = {id(p): [p.negative] if p.negative else [] for p in train + validation}
        if cfg.encoder.hard_negatives:
            # A BEIR folder's whole corpus is searched (what retrieval will rank), pairs files their positives.
            corpus = read_texts(cfg.data.train) if Path(cfg.data.train).is_dir() else []
            self._mine(cfg.encoder.hard_negatives, corpus)
        self.head = Temperature(cfg.encoder.temperature, cfg.encoder.learnable_temperature)

    def _mine(self, wanted: int, corpus: list[str]) -> None:
        """For each pair, the BM25 top documents for its query among all positives and `corpus`, minus its own."""
        from tunesmith.encoders.bm25 import BM25

        docs = sorted({p.positive for p in self.train + self.validation} | set(corpus))
        index = BM25(docs)
        for pair in self.train + self.validation:
            have = self.negatives[id(pair)]
            for doc in index.top(pair.query, wanted + 1):
                if len(have) >= wanted:
                    break
                if docs[doc] != pair.positive:
                    have.append(docs[doc])

    def summary(self) -> str:
        mined = sum(len(v) for v in self.negatives.values())
        return f"{len(self.train)} training pairs, {len(self.validation)} validation pairs, {mined} negatives"

    def prepare(self, pairs: list[Pair], generator: torch.Generator) -> Prepared:
        docs = [p.positive for p in pairs] + [n for p in pairs for n in self.negatives[id(p)]]
        # Queries and documents run apart: in one batch the short queries would take the documents'
        # length in the padded layout (of the whole batch, or of packed attention).
        batches = [self.encoder.batch(texts, self.max_len) for texts in ([p.query for p in pairs], docs)]
        # The same abstract can be the positive of several queries: it is no negative for them.
        same = torch.tensor([[d == p.positive and j != i for j, d in enumerate(docs)] for i, p in enumerate(pairs)])
        inputs = {"batches": batches, "queries": len(pairs), "same_text": same}
        return Prepared(inputs, len(pairs), sum(_tokens(b) for b in batches))

    def loss_sum(self, body, inputs: dict) -> tuple[torch.Tensor, int]:
        if self.scoring == "maxsim":
            queries, docs = (self.encoder.token_embeddings(batch, body) for batch in inputs["batches"])
            scores = maxsim_scores(*queries, *docs)
        else:
            scores = cosine_scores(*(self.encoder.embed(batch, body) for batch in inputs["batches"]))
        same_text = inputs["same_text"].to(scores.device)
        loss = contrastive_loss(scores, self.head(), same_text)
        # Accuracy: queries whose positive ranks first among the micro-batch's documents.
        ranked_first = scores.detach().masked_fill(same_text, float("-inf")).argmax(-1)
        return loss * inputs["queries"], int((ranked_first == torch.arange(len(scores), device=scores.device)).sum())


class MaskedLMTask:
    """Continued pre-training: texts cut into windows of max_seq_len tokens, BERT masking per batch."""

    def __init__(self, cfg: Config, encoder: Encoder, mlm_model):
        self.encoder, self.settings = encoder, cfg.encoder
        tokenizer = encoder.tokenizer
        if tokenizer.mask_token_id is None:
            raise TunesmithError(f"the tokenizer of {cfg.model!r} has no mask token; `mlm` needs one")
        texts = read_texts(cfg.data.train, cfg.data.columns)
        if cfg.data.validation:
            validation = read_texts(cfg.data.validation, cfg.data.columns)
        else:
            texts, validation = split_off(texts, cfg.data.val_fraction, cfg.train.seed)
        width = min(cfg.data.max_seq_len, encoder.pooling.max_seq_len) - tokenizer.num_special_tokens_to_add()
        self.train, self.validation = self._windows(texts, width), self._windows(validation, width)
        self.head = mlm_head(mlm_model)

    def _windows(self, texts: list[str], width: int) -> list[tuple[list[int], list[int]]]:
        """(token ids, word ids) per window of at most `width` tokens (a document may give several)."""
        out = []
        for text in texts:
            encoded = self.encoder.tokenizer(text, add_special_tokens=False)
            ids, words = encoded.input_ids, encoded.word_ids()
            for start in range(0, len(ids), width):
                out.append(
                    (ids[start : start + width], [w if w is not None else -1 for w in words[start : start + width]])
                )
        return out

    def summary(self) -> str:
        return f"{len(self.train)} training windows, {len(self.validation)} validation windows"

    def prepare(self, windows: list[tuple[list[int], list[int]]], generator: torch.Generator) -> Prepared:
        tokenizer = self.encoder.tokenizer
        # [CLS] window [SEP], then padding: BERT's layout (RoBERTa's <s> ... </s> is the same shape).
        width = max(len(ids) for ids, _ in windows) + 2
        input_ids = torch.full((len(windows), width), tokenizer.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(windows), width), dtype=torch.long)
        word_ids = torch.full((len(windows), width), -1, dtype=torch.long)
        for row, (ids, words) in enumerate(windows):
            input_ids[row, : len(ids) + 2] = torch.tensor([tokenizer.cls_token_id, *ids, tokenizer.sep_token_id])
            attention[row, : len(ids) + 2] = 1
            # Word ids count from the window's first word; special and padding positions stay -1.
            first = min((w for w in words if w >= 0), default=0)
            word_ids[row, 1 : len(ids) + 1] = torch.tensor([w - first if w >= 0 else -1 for w in words])
        special = word_ids < 0
        masked, labels = mask_tokens(
            input_ids,
            special,
            tokenizer.mask_token_id,
            len(tokenizer),
            self.settings.mlm_probability,
            generator,
            word_ids if self.settings.whole_word_mask else None,
        )
        inputs = {"input_ids": masked, "attention_mask": attention, "labels": labels}
        return Prepared(inputs, int((labels != -100).sum()), int(attention.sum()))

    def loss_sum(self, body, inputs: dict) -> tuple[torch.Tensor, int]:
        device = next(body.parameters()).device
        hidden = body(input_ids=inputs["input_ids"].to(device), attention_mask=inputs["attention_mask"].to(device))
        loss, _, correct = mlm_loss(hidden.last_hidden_state, inputs["labels"].to(device), self.head)
        return loss, correct


class ClassificationTask:
    """A linear head on the pooled (not normalised) embedding; labels are read from the training data."""

    def __init__(self, cfg: Config, encoder: Encoder):
        self.encoder, self.max_len = encoder, cfg.data.max_seq_len
        train = read_labelled(cfg.data.train, cfg.data.columns)
        if cfg.data.validation:
            validation = read_labelled(cfg.data.validation, cfg.data.columns)
        else:
            train, validation = split_off(train, cfg.data.val_fraction, cfg.train.seed)
        self.labels = sorted({x.label for x in train})
        unknown = [x for x in validation if x.label not in self.labels]
        if unknown:
            raise TunesmithError(
                f"{cfg.data.validation or cfg.data.train}:{unknown[0].line}: label {unknown[0].label!r} "
                f"never occurs in the training data ({', '.join(self.labels)})"
            )
        self.train, self.validation = train, validation
        self.head = torch.nn.Linear(encoder.model.config.hidden_size, len(self.labels))

    def summary(self) -> str:
        return f"{len(self.train)} training texts, {len(self.validation)} validation texts, labels {self.labels}"

    def prepare(self, items, generator: torch.Generator) -> Prepared:
        batch = self.encoder.batch([x.text for x in items], self.max_len)
        target = torch.tensor([self.labels.index(x.label) for x in items])
        return Prepared({"batch": batch, "target": target}, len(items), _tokens(batch))

    def loss_sum(self, body, inputs: dict) -> tuple[torch.Tensor, int]:
        logits = self.head(self.encoder.pooled(inputs["batch"], body))
        target = inputs["target"].to(logits.device)
        loss = F.cross_entropy(logits.float(), target, reduction="sum")
        return loss, int((logits.argmax(-1) == target).sum())
