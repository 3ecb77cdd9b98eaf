"""Turn `Example`s into token ids and labels for causal-LM training.

Chat examples are rendered with the tokenizer's own chat template and tokenized as one string,
so the ids are exactly what the template produces at inference time; the labels then mark the
tokens whose characters belong to a trained assistant reply or the end-of-turn token closing it.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tunesmith.chat.messages import Message
from tunesmith.chat.render import adds_bos, render_prompt, rendering, reply_text, template_inputs
from tunesmith.chat.tools import Tool
from tunesmith.data.formats import Example
from tunesmith.errors import TunesmithError

IGNORE_INDEX = -100

try:  # transformers' cache of compiled chat templates (private: without it, chat_renderer falls back)
    from transformers.utils.chat_template_utils import _compile_jinja_template
except ImportError:
    _compile_jinja_template = None


@dataclass(frozen=True)
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX where no loss; same length as input_ids
    line: int
    original_length: int  # length before truncation


def tokenize_example(tokenizer, example: Example, max_seq_len: int) -> TokenizedExample:
    """Tokenize one example, keeping its first max_seq_len tokens."""
    if example.text is not None:
        start = text_start(tokenizer)
        ids = encode_text(tokenizer, example.text, start)
        labels = text_labels(ids, start)
    else:
        ids, labels = _raise(tokenize_chats(tokenizer, [example])[0])
    return TokenizedExample(ids[:max_seq_len], labels[:max_seq_len], example.line, len(ids))


def _raise(result):
    if isinstance(result, TunesmithError):
        raise result
    return result


def tokenize_examples(tokenizer, examples: list[Example], max_seq_len: int) -> list[TokenizedExample]:
    """Chat examples one by one; raw-text examples packed into blocks of max_seq_len tokens."""
    chats = [tokenize_example(tokenizer, e, max_seq_len) for e in examples if e.text is None]
    return chats + _pack(tokenizer, [e for e in examples if e.text is not None], max_seq_len)


def _pack(tokenizer, examples: list[Example], max_seq_len: int) -> list[TokenizedExample]:
    # Packing wastes no compute on padding; the eos between texts tells the model where one
    # document ends, so it does not learn to run one into the next.
    stream: list[int] = []
    starts: list[int] = []
    start = text_start(tokenizer) if examples else []
    for example in examples:
        starts.append(len(stream))
        stream += encode_text(tokenizer, example.text, start)
    blocks = []
    for begin in range(0, len(stream), max_seq_len):
        block = stream[begin : begin + max_seq_len]
        owner = examples[bisect.bisect_right(starts, begin) - 1]
        blocks.append(TokenizedExample(block, text_labels(block, start), owner.line, len(block)))
    return blocks


def text_start(tokenizer) -> list[int]:
    """What a raw text starts with: the BOS where pretraining put one before every document."""
    return [tokenizer.bos_token_id] if adds_bos(tokenizer) else []


def encode_text(tokenizer, text: str, start: list[int]) -> list[int]:
    """A raw text as pretraining saw it: `start` (see text_start), its tokens, and the EOS."""
    return start + tokenizer(text, add_special_tokens=False)["input_ids"] + [_eos_id(tokenizer)]


def text_labels(ids: list[int], start: list[int]) -> list[int]:
    """Every token of raw text is trained but the BOS `start` put there: predicting the next document's
    BOS after the last one's EOS teaches nothing."""
    return [IGNORE_INDEX if t in start else t for t in ids]


def _eos_id(tokenizer) -> int:
    if tokenizer.eos_token_id is None:
        raise TunesmithError("the tokenizer has no eos token, so tunesmith cannot mark where text ends")
    return tokenizer.eos_token_id


def tokenize_chats(tokenizer, examples: list[Example]) -> list[tuple[list[int], list[int]] | TunesmithError]:
    """(ids, labels) of each chat example, or the error that stops it, whole (no truncation).

    The rendered texts go to the Rust tokenizer in one call: the same ids as tokenizer(...) per
    text without its Python per call, and ~40% less time per text than encode() one at a time.
    Checking the direct renderer costs four renders, so a single example takes apply_chat_template.
    """
    render = chat_renderer(tokenizer, examples[0]) if len(examples) > 1 else _checked_renderer(tokenizer)
    rendered = []
    for example in examples:
        try:
            rendered.append(_render_with_label_spans(render, tokenizer, example))
        except TunesmithError as error:
            rendered.append(error)
    texts = [r[0] for r in rendered if not isinstance(r, TunesmithError)]
    encodings = iter(tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False))
    return [r if isinstance(r, TunesmithError) else _labelled(next(encodings), r[1]) for r in rendered]


def _labelled(encoded, spans: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
    ids = np.array(encoded.ids, dtype=np.int64)
    offsets = np.array(encoded.offsets, dtype=np.int64).reshape(-1, 2)
    # A token is trained if any of its characters is; a token merging the header's newline with
    # a reply that starts with whitespace thus still teaches the reply's start.
    trained = np.zeros(len(ids), dtype=bool)
    for start, end in spans:
        trained |= (offsets[:, 0] < end) & (offsets[:, 1] > start)
    return ids.tolist(), np.where(trained, ids, IGNORE_INDEX).tolist()


def _render_with_label_spans(render, tokenizer, example: Example) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans [start, end) to compute loss on: each
    trained assistant turn (its text and tool calls) and the end-of-turn token closing it; tool
    results and the tools' schemas are prompt."""
    messages, mode = example.messages, rendering(tokenizer)
    full = _render(render, example, messages)
    spans = []
    for i, message in enumerate(messages):
        if message.role != "assistant" or not message.weight:
            continue
        prompt = _render(render, example, messages[:i], add_generation_prompt=True)
        done = full if i == len(messages) - 1 else _render(render, example, messages[: i + 1])
        if not (full.startswith(done) and done.startswith(prompt)):
            raise TunesmithError(
                f"line {example.line}: the tokenizer's chat template renders earlier turns differently "
                "once later ones are added, so tunesmith cannot tell which tokens are the reply"
            )
        reply = reply_text(message, mode)
        spans.append((len(prompt), len(prompt) + _reply_length(tokenizer, reply, done[len(prompt) :])))
    return full, spans


def _reply_length(tokenizer, reply: str, turn: str) -> int:
    """Length of the reply plus the eos token that closes it, leaving out what follows it."""
    close = turn.rfind(tokenizer.eos_token) if tokenizer.eos_token else -1
    if close >= 0 and turn[:close].rstrip().endswith(reply.strip()):
        return close + len(tokenizer.eos_token)
    # The template ends turns with something other than eos: train on the whole turn, which
    # still includes whatever token ends it.
    return len(turn)


def chat_renderer(tokenizer, sample: Example):
    """A function (example, messages, add_generation_prompt) -> the text apply_chat_template renders.

    For a short chat, apply_chat_template's own checks and copies of the messages take half its
    time; the compiled template, called with the context it would get, is used instead when it
    renders `sample` (with and without the generation prompt) to exactly the same text.
    """

    checked = _checked_renderer(tokenizer)
    if _compile_jinja_template is None or not isinstance(tokenizer.chat_template, str):
        return checked
    context, mode = dict(tokenizer.special_tokens_map), rendering(tokenizer)

    def direct(example, messages, add_generation_prompt=False):
        chat, tools = template_inputs(messages, example.tools, example.parallel_tool_calls, mode)
        prompt = add_generation_prompt
        return template.render(messages=chat, tools=tools, documents=None, add_generation_prompt=prompt, **context)

    try:
        template = _compile_jinja_template(tokenizer.chat_template)
        same = all(direct(sample, sample.messages, g) == checked(sample, sample.messages, g) for g in (False, True))
    except Exception:  # jinja raises its own types; the checked path reports them per example
        same = False
    return direct if same else checked


def _checked_renderer(tokenizer):
    mode = rendering(tokenizer)

    def checked(example, messages, add_generation_prompt=False):
        chat, tools = template_inputs(messages, example.tools, example.parallel_tool_calls, mode)
        return tokenizer.apply_chat_template(
            chat, tools=tools, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    return checked


def _render(render, example: Example, messages, add_generation_prompt: bool = False) -> str:
    try:
        return render(example, messages, add_generation_prompt)
    except Exception as e:  # jinja raises its own types, and templates raise on purpose
        raise TunesmithError(f"line {example.line}: the tokenizer's chat template failed: {e}") from None


def encode_chat(
    tokenizer, messages: Sequence[Message], tools: tuple[Tool, ...] = (), parallel_tool_calls: bool = True
) -> list[int]:
    """Token ids of a chat (offering ``tools``) rendered as training renders it, ending with the assistant header."""
    text = render_prompt(tokenizer, messages, tools, parallel_tool_calls)
    # The template already wrote any BOS it wants; tokenising again must not add another.
    return tokenizer(text, add_special_tokens=False).input_ids
