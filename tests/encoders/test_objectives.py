"""MLM masking statistics and labels; the contrastive loss against a plain implementation."""

import math

import pytest
import torch
import torch.nn.functional as F
from encoder_helpers import plain_maxsim

from tunesmith.encoders.objectives import (
    IGNORE_INDEX,
    Temperature,
    contrastive_loss,
    cosine_scores,
    mask_tokens,
    maxsim_scores,
)

MASK_ID, VOCAB = 103, 30522


def _masked(shape=(64, 128), probability=0.15, seed=0, word_ids=None):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, VOCAB, shape, generator=generator)
    special = torch.zeros(shape, dtype=torch.bool)
    special[:, 0] = special[:, -1] = True  # [CLS] ... [SEP]
    masked, labels = mask_tokens(ids, special, MASK_ID, VOCAB, probability, generator, word_ids)
    return ids, special, masked, labels


def test_masking_statistics_follow_bert():
    ids, special, masked, labels = _masked()
    chosen = labels != IGNORE_INDEX
    candidates = (~special).sum().item()
    n = chosen.sum().item()
    # 8,064 candidates: 15% +- 4 standard deviations of a binomial share.
    assert abs(n / candidates - 0.15) < 4 * math.sqrt(0.15 * 0.85 / candidates)
    as_mask = (masked[chosen] == MASK_ID).float().mean().item()
    kept = (masked[chosen] == ids[chosen]).float().mean().item()
    randomised = 1 - as_mask - kept
    assert abs(as_mask - 0.8) < 0.05
    assert abs(kept - 0.1) < 0.04  # a random token equal to the original counts as kept (p ~ 3e-5)
    assert abs(randomised - 0.1) < 0.04


def test_labels_only_on_masked_positions():
    ids, special, masked, labels = _masked()
    chosen = labels != IGNORE_INDEX
    assert torch.equal(labels[chosen], ids[chosen])  # the original token, not the corrupted one
    assert not chosen[special].any()  # special tokens are never chosen
    assert torch.equal(masked[~chosen], ids[~chosen])  # unchosen positions are untouched


def test_masking_is_a_function_of_the_generator_seed():
    assert torch.equal(_masked(seed=5)[3], _masked(seed=5)[3])
    assert not torch.equal(_masked(seed=5)[3], _masked(seed=6)[3])


def test_whole_word_masking_masks_every_piece_of_a_word():
    shape = (32, 60)
    word_ids = torch.arange(shape[1]).div(3, rounding_mode="floor").expand(shape).clone()  # 3 pieces a word
    word_ids[:, 0] = word_ids[:, -1] = -1
    _, special, _, labels = _masked(shape, 0.3, word_ids=word_ids)
    chosen = labels != IGNORE_INDEX
    for row in range(shape[0]):
        for word in range(1, 19):
            pieces = chosen[row][word_ids[row] == word]
            assert pieces.all() or not pieces.any()
    assert 0.2 < chosen.float()[~special].mean().item() < 0.4


def plain_mnrl(queries, documents, scale):
    """MultipleNegativesRankingLoss written out: per query, -log softmax of its positive's cosine."""
    total = 0.0
    for i, q in enumerate(queries):
        cosines = torch.stack([F.cosine_similarity(q, d, dim=0) for d in documents]) * scale
        total += -(cosines[i] - torch.logsumexp(cosines, dim=0))
    return total / len(queries)


@pytest.mark.parametrize(
    ("batch", "negatives", "scale"),
    [(1, 0, 20.0), (4, 0, 20.0), (4, 4, 20.0), (3, 6, 1.0), (8, 8, 50.0)],
)
def test_contrastive_loss_equals_plain_implementation(batch, negatives, scale):
    generator = torch.Generator().manual_seed(batch + negatives)
    queries = torch.randn(batch, 16, generator=generator)
    documents = torch.randn(batch + negatives, 16, generator=generator)
    ours = contrastive_loss(cosine_scores(queries, documents), scale)
    assert ours.item() == pytest.approx(plain_mnrl(queries, documents, scale).item(), rel=1e-5, abs=1e-6)


def test_duplicate_positives_are_not_negatives():
    queries = torch.randn(3, 8)
    documents = torch.randn(3, 8)
    documents[2] = documents[0]  # queries 0 and 2 share one abstract
    same = torch.tensor([[False, False, True], [False, False, False], [True, False, False]])
    ours = contrastive_loss(cosine_scores(queries, documents), 20.0, same)
    kept = [[0, 1], [0, 1, 2], [1, 2]]
    # Row by row: -log softmax over the documents that are not the same text as the positive.
    rows = []
    for i, cols in enumerate(kept):
        cos = F.cosine_similarity(queries[i].unsqueeze(0), documents[cols], dim=1) * 20.0
        rows.append(-(cos[cols.index(i)] - torch.logsumexp(cos, 0)))
    assert ours.item() == pytest.approx(torch.stack(rows).mean().item(), rel=1e-5)


def test_temperature_is_a_parameter_only_when_learnable():
    assert Temperature(0.05, learnable=False)().item() == pytest.approx(20.0)
    assert [p.numel() for p in Temperature(0.05, learnable=False).parameters()] == []
    learnable = Temperature(0.001, learnable=True)
    assert [p.numel() for p in learnable.parameters()] == [1]
    assert learnable().item() == 100.0  # capped like CLIP's logit scale


def test_maxsim_scores_equal_plain_implementation_values_and_gradients():
    generator = torch.Generator().manual_seed(0)
    query_lengths, document_lengths = torch.tensor([1, 3, 5]), torch.tensor([4, 2, 7, 1])
    queries = F.normalize(torch.randn(int(query_lengths.sum()), 8, generator=generator), dim=-1).requires_grad_()
    documents = F.normalize(torch.randn(int(document_lengths.sum()), 8, generator=generator), dim=-1)
    # A document whose best match for the first query is negative: padding must not read as 0. (No
    # exact ties: at a tie any split of the gradient is right, and the two implementations differ.)
    documents[:4] = F.normalize(-queries[:1].detach() + 0.1 * torch.randn(4, 8, generator=generator), dim=-1)
    documents.requires_grad_()
    ours = maxsim_scores(queries, query_lengths, documents, document_lengths)
    q_split, d_split = queries.split(query_lengths.tolist()), documents.split(document_lengths.tolist())
    plain = plain_maxsim(list(q_split), list(d_split))
    assert ours.shape == (3, 4)
    assert torch.allclose(ours, plain, atol=1e-6)
    assert ours[0, 0] < 0
    weights = torch.randn(3, 4, generator=generator)
    ours_grads = torch.autograd.grad((ours * weights).sum(), (queries, documents))
    plain_grads = torch.autograd.grad((plain * weights).sum(), (queries, documents))
    for a, b in zip(ours_grads, plain_grads, strict=True):
        assert torch.allclose(a, b, atol=1e-6)
