"""The three encoder objectives: masked-LM, in-batch-negatives contrastive, classification.

Each is a small head beside the transformer body (the body is what gets LoRA or full training;
a head is always trained in full) and a loss over a batch of examples.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
# CLIP's cap on a learned logit scale: beyond it training becomes unstable.
MAX_LOGIT_SCALE = 100.0


def mask_tokens(
    input_ids: torch.Tensor,
    special: torch.Tensor,
    mask_id: int,
    vocab_size: int,
    probability: float,
    generator: torch.Generator,
    word_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking: choose `probability` of the non-special tokens; of those 80% become [MASK],
    10% a random token, 10% stay. Labels hold the original token at chosen positions only.

    With `word_ids` ([batch, seq], -1 for special tokens) whole words are chosen: every piece of a
    chosen word is masked, so the model cannot guess a piece from its neighbours.
    """
    if word_ids is None:
        chosen = (torch.rand(input_ids.shape, generator=generator) < probability) & ~special
    else:
        words = int(word_ids.max()) + 1 if word_ids.numel() else 0
        pick = torch.rand((input_ids.shape[0], max(words, 1)), generator=generator) < probability
        chosen = (word_ids >= 0) & pick.gather(1, word_ids.clamp(min=0)) & ~special
    labels = torch.where(chosen, input_ids, IGNORE_INDEX)
    roll = torch.rand(input_ids.shape, generator=generator)
    masked = input_ids.clone()
    masked[chosen & (roll < 0.8)] = mask_id
    randomised = chosen & (roll >= 0.8) & (roll < 0.9)
    masked[randomised] = torch.randint(vocab_size, input_ids.shape, generator=generator)[randomised]
    return masked, labels


def contrastive_loss(
    queries: torch.Tensor, documents: torch.Tensor, scale: torch.Tensor | float, same_text: torch.Tensor | None = None
) -> torch.Tensor:
    """Multiple-negatives ranking loss: query i's positive is document i; every other document in the
    batch (the other positives, then any hard negatives) is a negative. Cosine similarity x scale,
    cross-entropy over the documents. `same_text[i, j]` (True where document j is the same text as
    positive i, j != i) removes such false negatives from query i's softmax."""
    scores = F.normalize(queries, dim=-1) @ F.normalize(documents, dim=-1).T * scale
    if same_text is not None:
        scores = scores.masked_fill(same_text, float("-inf"))
    return F.cross_entropy(scores, torch.arange(len(queries), device=queries.device))


class Temperature(torch.nn.Module):
    """The contrastive logit scale 1/temperature; a parameter (in log space) when learnable."""

    def __init__(self, temperature: float, learnable: bool):
        super().__init__()
        log_scale = torch.tensor(math.log(1.0 / temperature))
        if learnable:
            self.log_scale = torch.nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)

    def forward(self) -> torch.Tensor:
        return self.log_scale.exp().clamp(max=MAX_LOGIT_SCALE)


def mlm_head(mlm_model) -> torch.nn.Module:
    """The masked-LM model's head (the one child beside its body), e.g. BERT's `cls`."""
    heads = [m for m in mlm_model.children() if m is not mlm_model.base_model]
    if len(heads) != 1:
        raise ValueError(f"{type(mlm_model).__name__}: expected one head module beside the body, got {len(heads)}")
    return heads[0]


def mlm_loss(hidden: torch.Tensor, labels: torch.Tensor, head: torch.nn.Module) -> tuple[torch.Tensor, int, int]:
    """Summed cross-entropy at masked positions only (the head never sees the other ~85%):
    (loss sum, masked tokens, correctly predicted masked tokens)."""
    where = labels != IGNORE_INDEX
    logits = head(hidden[where])
    target = labels[where]
    loss = F.cross_entropy(logits.float(), target, reduction="sum")
    return loss, int(where.sum()), int((logits.argmax(-1) == target).sum())
