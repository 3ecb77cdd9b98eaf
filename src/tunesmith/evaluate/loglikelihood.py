"""Log-likelihood scoring on already-tokenised prompts (generation itself: tunesmith.generation).

Prompts are padded on the LEFT, as for generation: a continuation's log-probs then come from the
same trailing positions of every row, and position ids count from each row's first real token.
Prompts are sorted by length before batching (less padding) and results returned in input order.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tunesmith.generation import batches_by_length, left_padded, model_device

# Label positions projected through lm_head at once: bounds memory at chunk x vocab floats
# instead of batch x seq x vocab.
LOGIT_CHUNK = 1024


def continuation_logprobs(
    model,
    pad_id: int,
    prompts: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[int]],
    batch_size: int,
) -> list[tuple[float, int]]:
    """(sum of log-probs, token count) of each continuation given its prompt, batched.

    Runs the decoder to hidden states and projects only the continuation positions through the
    output layer, in chunks, so [batch, seq, vocab] logits never exist.
    """
    if any(not p for p in prompts):
        raise ValueError("every prompt needs at least one token to condition the continuation on")
    decoder = model.get_decoder()
    device = model_device(model)
    results: list[tuple[float, int]] = [(0.0, 0)] * len(prompts)
    with torch.inference_mode():
        lengths = [len(p) + len(c) for p, c in zip(prompts, continuations, strict=True)]
        for batch in batches_by_length(lengths, batch_size, "scoring"):
            ids, mask = left_padded([list(prompts[i]) + list(continuations[i]) for i in batch], pad_id)
            ids, mask = ids.to(device), mask.to(device)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            hidden = decoder(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False)
            # With left padding a continuation of c tokens fills the last c columns; the hidden
            # state one column earlier predicts each of its tokens.
            width = ids.shape[1]
            scored = torch.zeros_like(mask, dtype=torch.bool)
            sizes = [len(continuations[i]) for i in batch]
            for row, size in enumerate(sizes):
                scored[row, width - size :] = True
            states = hidden.last_hidden_state[:, :-1][scored[:, 1:]]
            targets = ids[:, 1:][scored[:, 1:]]
            logprobs = _token_logprobs(model, states, targets[:, None]).squeeze(-1)
            for i, size, values in zip(batch, sizes, logprobs.split(sizes), strict=True):
                results[i] = (float(values.sum()), size)
    return results


def label_logprobs(
    model,
    pad_id: int,
    prompts: Sequence[Sequence[int]],
    label_ids: Sequence[Sequence[int]],
    batch_size: int,
) -> list[list[tuple[float, int]]]:
    """(sum of log-probs, token count) of every label after every prompt: result[prompt][label].

    Same scores as ``continuation_logprobs`` on each (prompt, label) pair, but each prompt is run
    once: its KV cache is copied per label and all labels (minus their last token, which is only
    predicted) are run in one short forward. A label's first token is scored from the prompt's
    last hidden state. ``batch_size`` bounds the rows of the label pass (prompts x labels), so
    the copied caches take no more memory than a batch of ``batch_size`` prompts.
    """
    if any(not p for p in prompts):
        raise ValueError("every prompt needs at least one token to condition the continuation on")
    if not label_ids or any(not ids for ids in label_ids):
        raise ValueError("every label needs at least one token")
    decoder = model.get_decoder()
    device = model_device(model)
    n_labels, sizes = len(label_ids), [len(ids) for ids in label_ids]
    # Label tokens fed after the prompt (all but the last), right-padded: padding only follows
    # real tokens, so the causal mask keeps it out of every scored position.
    width = max(sizes) - 1
    fed = torch.full((n_labels, width), pad_id, dtype=torch.long)
    fed_mask = torch.zeros((n_labels, width), dtype=torch.long)
    for j, ids in enumerate(label_ids):
        fed[j, : len(ids) - 1] = torch.tensor(ids[:-1], dtype=torch.long)
        fed_mask[j, : len(ids) - 1] = 1
    fed, fed_mask = fed.to(device), fed_mask.to(device)
    firsts = torch.tensor([ids[0] for ids in label_ids], device=device)
    later = fed_mask.bool()  # fed position k predicts label token k + 1
    later_targets = torch.tensor([t for ids in label_ids for t in ids[1:]], dtype=torch.long, device=device)
    results: list[list[tuple[float, int]]] = [[] for _ in prompts]
    with torch.inference_mode():
        per_batch = max(1, batch_size // n_labels) if width else batch_size
        for batch in batches_by_length([len(p) for p in prompts], per_batch, "scoring labels"):
            ids, mask = left_padded([prompts[i] for i in batch], pad_id)
            ids, mask = ids.to(device), mask.to(device)
            rows = len(batch)
            out = decoder(
                input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0), use_cache=True
            )
            totals = _token_logprobs(model, out.last_hidden_state[:, -1], firsts.expand(rows, -1))
            if width:
                cache = out.cache
                cache.batch_repeat_interleave(n_labels)  # row order: prompt-major, then label
                lengths = mask.sum(-1).repeat_interleave(n_labels)
                hidden = decoder(
                    input_ids=fed.repeat(rows, 1),
                    attention_mask=torch.cat([mask.repeat_interleave(n_labels, 0), fed_mask.repeat(rows, 1)], -1),
                    position_ids=lengths[:, None] + torch.arange(width, device=device),
                    cache=cache,
                    use_cache=True,
                ).last_hidden_state
                scored = later.repeat(rows, 1)
                rest = torch.zeros(scored.shape, device=device)
                rest[scored] = _token_logprobs(model, hidden[scored], later_targets.repeat(rows)[:, None]).squeeze(-1)
                totals = totals + rest.sum(-1).view(rows, n_labels)
            for i, row in zip(batch, totals.tolist(), strict=True):
                results[i] = list(zip(row, sizes, strict=True))
    return results


def _token_logprobs(model, states: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[n, k] log-probs of k target tokens after each of n hidden states.

    Projects LOGIT_CHUNK states through lm_head at a time.
    """
    head = model.get_output_embeddings()
    softcap = getattr(model.config, "final_logit_softcapping", None)  # Gemma-2 style logit capping
    logprobs = [torch.zeros(targets.shape, device=states.device)[:0]]  # cat needs one part when n is 0
    for start in range(0, len(targets), LOGIT_CHUNK):
        logits = head(states[start : start + LOGIT_CHUNK]).float()
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        logprobs.append(torch.log_softmax(logits, dim=-1).gather(-1, targets[start : start + LOGIT_CHUNK]))
    return torch.cat(logprobs)
