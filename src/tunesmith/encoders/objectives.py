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


def cosine_scores(queries: torch.Tensor, documents: torch.Tensor) -> torch.Tensor:
    """[queries, documents] cosine similarities of pooled embeddings."""
    return F.normalize(queries, dim=-1) @ F.normalize(documents, dim=-1).T


class _BestMatch(torch.autograd.Function):
    """[query tokens, documents]: each query token's best dot product among each document's tokens
    (`padded`: [documents * longest, dim], every document's tokens then copies of its last). Backward
    reads only the best token of each pair, as ColBERT trains: autograd through `amax` would keep the
    [query tokens, documents * longest] similarities and run two matmuls of that size again."""

    @staticmethod
    def forward(ctx, queries, padded, longest: int):
        similarities = (queries @ padded.T).view(len(queries), -1, longest)
        best, where = similarities.max(-1)
        ctx.save_for_backward(queries, padded, where)
        ctx.longest = longest
        return best

    @staticmethod
    def backward(ctx, grad):
        queries, padded, where = ctx.saved_tensors
        grad_queries, grad_padded = torch.zeros_like(queries), torch.zeros_like(padded)
        # One document at a time: all of them at once would gather [query tokens, documents, dim].
        for doc in range(where.shape[1]):
            slots = where[:, doc] + doc * ctx.longest
            weight = grad[:, doc, None]
            grad_queries.addcmul_(weight, padded.index_select(0, slots))
            grad_padded.index_add_(0, slots, weight * queries)
        return grad_queries, grad_padded, None


def maxsim_scores(
    queries: torch.Tensor, query_lengths: torch.Tensor, documents: torch.Tensor, document_lengths: torch.Tensor
) -> torch.Tensor:
    """Late interaction (ColBERT's MaxSim): [queries, documents] scores, each the mean over a query's
    tokens of that token's best similarity among the document's tokens. Tokens come back to back
    ([tokens, dim], unit length), each text's given by its length.

    A rare term keeps its own vector instead of being averaged into one embedding per text, which
    is what BM25 rewards and mean pooling loses."""
    longest = int(document_lengths.max())
    starts = document_lengths.cumsum(0) - document_lengths
    offsets = torch.arange(longest, device=documents.device)
    # Padding slots repeat the document's last token: the max is the same without a mask.
    slots = starts[:, None] + torch.minimum(offsets, document_lengths[:, None] - 1)
    best = _BestMatch.apply(queries, documents.index_select(0, slots.reshape(-1)), longest)
    owner = torch.repeat_interleave(torch.arange(len(query_lengths), device=queries.device), query_lengths)
    sums = best.new_zeros(len(query_lengths), len(document_lengths)).index_add_(0, owner, best)
    return sums / query_lengths[:, None].to(sums.dtype)


def contrastive_loss(
    scores: torch.Tensor, scale: torch.Tensor | float, same_text: torch.Tensor | None = None
) -> torch.Tensor:
    """Multiple-negatives ranking loss over [queries, documents] similarities (`cosine_scores` or
    `maxsim_scores`): query i's positive is document i; every other document in the batch (the other
    positives, then any hard negatives) is a negative. Similarity x scale, cross-entropy over the
    documents. `same_text[i, j]` (True where document j is the same text as positive i, j != i)
    removes such false negatives from query i's softmax."""
    scores = scores * scale
    if same_text is not None:
        scores = scores.masked_fill(same_text, float("-inf"))
    return F.cross_entropy(scores, torch.arange(len(scores), device=scores.device))


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
