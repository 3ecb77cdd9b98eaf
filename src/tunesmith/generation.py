"""One generation stack for evaluation, `tunesmith generate` and the service.

A plain decoding loop over the model's KV cache: prompts are padded on the LEFT (every row's last
prompt token sits in the last column, so each step appends one column to all rows), position ids
count from each row's first real token, so a padded row is computed exactly as it would be alone.
Tensors go to the model's device; precision is the caller's autocast (the recipe's base samples
run under the training dtype, the CLI and the service in the model's own dtype).

Sampling draws from a ``torch.Generator`` of its own, seeded per call: generating never changes
the global RNG (a recipe generates base samples after ``train.seed`` was applied, and its dropout
and initialisation must keep that stream), and the same seed gives the same text everywhere.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from tunesmith.constrained import constrain
from tunesmith.progress import tracked

GREEDY_BELOW = 1e-5  # temperatures below this pick the argmax: the distribution is one-hot in float32


@dataclass
class Sampling:
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)  # strings that end the text (streaming only)


@dataclass
class Generations:
    texts: list[str]
    new_tokens: list[int]  # tokens produced per prompt, the end-of-turn token included
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return sum(self.new_tokens) / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Piece:
    """One step of a streamed generation: new text, and on the last piece the finish reason and counts."""

    text: str
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def left_padded(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row) :] = 1
    return ids, mask


def sampler(sampling: Sampling, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """logits [rows, vocab] -> next tokens [rows]: greedy, or temperature and top-p from a local generator."""
    if sampling.temperature < GREEDY_BELOW:
        return lambda logits: logits.argmax(-1)
    generator = torch.Generator(device)
    if sampling.seed is None:
        generator.seed()
    else:
        generator.manual_seed(sampling.seed)

    def pick(logits: torch.Tensor) -> torch.Tensor:
        # Shifted so the largest logit is 0: no overflow to inf (and NaN) at small temperatures.
        probs = torch.softmax((logits - logits.max(-1, keepdim=True).values) / sampling.temperature, dim=-1)
        if sampling.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < sampling.top_p
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs * keep)
        return torch.multinomial(probs / probs.sum(-1, keepdim=True), 1, generator=generator).squeeze(-1)

    return pick


def decode(
    model,
    prompts: Sequence[Sequence[int]],
    pad_id: int,
    max_new_tokens: int,
    pick: Callable[[torch.Tensor], torch.Tensor],
    rows: Sequence[int] | None = None,
) -> Iterator[torch.Tensor]:
    """Each step's next token of every row [rows], computed with the KV cache; the caller stops it.

    ``rows``: the prompt each row continues (default: one row per prompt). A prompt shared by
    several rows (GRPO's group of answers) is prefilled once and its cache copied to its rows:
    the rows are then computed as if each had been prefilled alone.
    """
    device = model_device(model)
    ids, mask = (t.to(device) for t in left_padded(prompts, pad_id))
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    source = None if rows is None else torch.tensor(rows, dtype=torch.long, device=device)
    n_rows = len(prompts) if rows is None else len(rows)
    keep = last_logits_only(model)
    cache = None
    for _ in range(max_new_tokens):
        # Entered per step, not around the yield: inference mode is per thread, and the caller's
        # code between steps must not run in it.
        with torch.inference_mode():
            out = model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True, **keep)
            cache, logits = out.cache, out.logits[:, -1].float()
            if source is not None:  # after the prefill: each row takes its prompt's cache and state
                cache.reorder_cache(source)
                logits, mask, positions, source = logits[source], mask[source], positions[source], None
            token = pick(logits)
            ids = token[:, None]
            mask = torch.cat([mask, mask.new_ones((n_rows, 1))], dim=1)
            positions = positions[:, -1:] + 1
        yield token


def last_logits_only(model) -> dict:
    """``logits_to_keep=1`` where the model takes it: the prefill computes the output layer for the
    last position only (the one sampled from), not the whole prompt's [tokens, vocab]."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT passes it through
    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(base.forward).parameters else {}


def batches_by_length(lengths: Sequence[int], batch_size: int, description: str) -> Iterator[list[int]]:
    # Longest first: an out-of-memory batch fails at the start, not after minutes of work.
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    yield from tracked(batches, f"{description} {len(lengths)} prompts")


def generate_tokens(
    model,
    prompts: Sequence[Sequence[int]],
    pad_id: int,
    eos_id: int | None,
    max_new_tokens: int,
    batch_size: int,
    pick: Callable[[torch.Tensor], torch.Tensor],
    grammars: Sequence | None = None,
    copies: int = 1,
) -> list[list[int]]:
    """Each prompt's new token ids, up to and including its end-of-turn token ``eos_id``.

    ``copies``: continuations per prompt (a GRPO group), prompt by prompt in the result. The
    batches are those of the prompts each listed ``copies`` times, and so are the tokens drawn;
    each batch prefills a prompt once however many of its copies it holds.
    """
    produced_all: list[list[int]] = [[] for _ in range(len(prompts) * copies)]
    lengths = [len(prompts[i // copies]) for i in range(len(produced_all))]
    for batch in batches_by_length(lengths, batch_size, "generating"):
        produced: list[list[int]] = [[] for _ in batch]
        done = [False] * len(batch)
        step = pick if grammars is None else constrain(pick, [grammars[i // copies] for i in batch], eos_id)
        shared = {p: k for k, p in enumerate(dict.fromkeys(i // copies for i in batch))}  # the batch's prompts
        rows = None if copies == 1 else [shared[i // copies] for i in batch]
        for tokens in decode(model, [prompts[p] for p in shared], pad_id, max_new_tokens, step, rows):
            for row, token in enumerate(tokens.tolist()):
                if not done[row]:
                    produced[row].append(token)
                    done[row] = token == eos_id
            if all(done):
                break
        for i, row in zip(batch, produced, strict=True):
            produced_all[i] = row
    return produced_all


def generate(
    model,
    tokenizer,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    batch_size: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    grammars: Sequence | None = None,
) -> Generations:
    """Greedy (temperature 0) or sampled continuations, each stopping at the end-of-turn token.

    The end-of-turn token is ``tokenizer.eos_token`` (``<|im_end|>`` for ChatML models such as
    SmolLM2); it is counted as produced but not decoded into the text. ``grammars``: one compiled
    grammar (tunesmith.constrained) or None per prompt, holding that prompt's tokens to it.
    """
    pick = sampler(Sampling(max_new_tokens, temperature, top_p, seed), model_device(model))
    start = time.perf_counter()
    produced = generate_tokens(
        model, prompts, tokenizer.pad_token_id, tokenizer.eos_token_id, max_new_tokens, batch_size, pick, grammars
    )
    texts = [tokenizer.decode(row, skip_special_tokens=True) for row in produced]
    return Generations(texts, [len(row) for row in produced], time.perf_counter() - start)


def stream(
    model,
    tokenizer,
    prompt_ids: list[int],
    sampling: Sampling,
    should_stop: Callable[[], bool] = lambda: False,
    grammar=None,
) -> Iterator[Piece]:
    """Text pieces of one prompt's continuation as tokens come; the last carries finish_reason and counts.
    ``grammar``: a compiled grammar (tunesmith.constrained) the continuation is held to.

    Ends at the end-of-turn token or a ``sampling.stop`` string ("stop"), at ``max_new_tokens`` or
    the model's context, or when ``should_stop()`` turns true before a token ("length").
    """
    eos = {tokenizer.eos_token_id} - {None}
    context = getattr(model.config, "max_position_embeddings", None) or 2048
    limit = max(0, min(sampling.max_new_tokens, context - len(prompt_ids)))
    pick = sampler(sampling, model_device(model))
    if grammar is not None:
        pick = constrain(pick, [grammar], tokenizer.eos_token_id)
    generated: list[int] = []
    sent = ""  # text already yielded
    finish = "length"
    steps = decode(model, [prompt_ids], tokenizer.pad_token_id or 0, limit, pick)
    while not should_stop() and (token := next(steps, None)) is not None:
        generated.append(int(token[0]))
        if generated[-1] in eos:
            finish = "stop"
            break
        text = tokenizer.decode(generated, skip_special_tokens=True)
        cut = min((i for s in sampling.stop if (i := text.find(s)) >= 0), default=-1)
        if cut >= 0:
            text, finish = text[:cut], "stop"
        elif text.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
            continue
        if len(text) > len(sent) and text.startswith(sent):
            yield Piece(text[len(sent) :])
            sent = text
        if cut >= 0:
            break
    steps.close()
    yield Piece("", finish, len(prompt_ids), len(generated))
