"""Preference pairs for DPO: read, validate and tokenize.

Two formats, detected from the keys:

* `openai_dpo`, OpenAI's DPO JSONL: `{"input": {"messages": [...]}, "preferred_output":
  [{"role": "assistant", "content": ...}], "non_preferred_output": [...]}`; the input may declare
  `tools` (and `parallel_tool_calls`), and the answers may carry `tool_calls`, read and rendered as
  in chat data;
* `chosen_rejected`, the common `{"prompt", "chosen", "rejected"}`: the prompt a string (one user
  turn) or a message list, each answer a string or a one-message assistant list.

A pair is tokenized as two sequences, prompt + preferred answer and prompt + other answer, with
labels on the answer (and the end-of-turn token closing it) only. Earlier assistant turns of the
prompt carry no labels. A pair that does not fit in max_seq_len loses its earliest turns first
(the last user turn and the answers are what DPO compares), then its tail.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from tunesmith.chat.tools import Tool, ToolCall
from tunesmith.config import PREFERENCE_FORMATS
from tunesmith.data.formats import (
    PAIR_KEYS,
    Example,
    LineError,
    LoadedData,
    Message,
    Problem,
    call_problems,
    check_keys,
    json_records,
    json_type,
    message_content,
    n_errors,
    parse_message,
    read_data_text,
    read_records,
    read_tools,
)
from tunesmith.data.sources import first_keys
from tunesmith.data.tokenize import IGNORE_INDEX, TokenizedExample, tokenize_example
from tunesmith.data.validate import ValidationReport, duplicates, overlap, token_stats
from tunesmith.errors import TunesmithError

_KEYS = {
    "openai_dpo": (("input", "preferred_output", "non_preferred_output"), ()),
    "chosen_rejected": (("prompt", "chosen", "rejected"), ()),
}
# (field of the preferred answer, field of the other) per format, for messages naming the field.
_SIDES = {"openai_dpo": ("preferred_output", "non_preferred_output"), "chosen_rejected": ("chosen", "rejected")}


@dataclass(frozen=True)
class PreferencePair:
    line: int
    prompt: tuple[Message, ...]  # ends with a user (or tool) turn; assistant turns in it have weight 0
    chosen: str  # the answers' text ("" for an answer that only calls tools)
    rejected: str
    chosen_calls: tuple[ToolCall, ...] = ()
    rejected_calls: tuple[ToolCall, ...] = ()
    tools: tuple[Tool, ...] = ()
    parallel_tool_calls: bool = True

    def side(self, preferred: bool) -> Example:
        """The prompt followed by one answer, as a chat example trained on that answer only."""
        content, calls = (self.chosen, self.chosen_calls) if preferred else (self.rejected, self.rejected_calls)
        messages = (*self.prompt, Message("assistant", content, tool_calls=calls))
        return Example(self.line, messages, tools=self.tools, parallel_tool_calls=self.parallel_tool_calls)


@dataclass(frozen=True)
class TokenizedPair:
    chosen: TokenizedExample
    rejected: TokenizedExample
    line: int
    dropped_turns: int  # prompt messages dropped from the front to fit max_seq_len


def holds_pairs(path, format: str = "auto") -> bool:
    """Whether a data file is preference data (by its format setting, else by its first object)."""
    if format != "auto":
        return format in PREFERENCE_FORMATS
    return bool(PAIR_KEYS & first_keys(str(path)))


def read_pairs(path, format: str = "auto") -> LoadedData:
    """Every valid pair of the file; every bad line a LineError naming its field."""
    path = str(path)
    text = read_data_text(path)
    if format == "auto":
        format = _detect(path, text)
    elif format not in PREFERENCE_FORMATS:
        raise TunesmithError(f"{path}: {format} is not a preference format ({', '.join(PREFERENCE_FORMATS)})")
    pairs, errors = read_records(path, text, _KEYS[format], _CONVERTERS[format])
    if not pairs and not errors:
        raise TunesmithError(f"{path}: no examples")
    return LoadedData(path, format, pairs, errors)


def _detect(path: str, text: str) -> str:
    for _, value in json_records(path, text):
        if isinstance(value, dict):
            keys = set(value)
            if keys & {"input", "preferred_output", "non_preferred_output"}:
                return "openai_dpo"
            if keys & {"chosen", "rejected"}:
                return "chosen_rejected"
            raise TunesmithError(
                f"cannot detect the preference format of {path}: the first object has keys "
                f"{', '.join(sorted(keys))}; expected input + preferred_output + non_preferred_output "
                "(OpenAI DPO) or prompt + chosen + rejected"
            )
    raise TunesmithError(f"cannot detect the preference format of {path}: no line is a JSON object")


def _prompt(raw, field: str, problems: list[Problem], validators=None) -> tuple[Message, ...]:
    if isinstance(raw, str):
        content = message_content(raw, field, problems)
        return (Message("user", content),) if content is not None else ()
    if not isinstance(raw, list):
        problems.append((field, f"expected a string or an array of messages, got {json_type(raw)}"))
        return ()
    if not raw:
        problems.append((field, "empty prompt"))
        return ()
    before = len(problems)
    messages = tuple(parse_message(i, m, problems, field, validators) for i, m in enumerate(raw))
    if not n_errors(problems[before:]):
        problems += [(f.replace("messages", field, 1), *rest) for f, *rest in call_problems(messages, True)]
    if n_errors(problems[before:]):
        return ()
    if messages[-1].role not in ("user", "tool"):
        problems.append((f"{field}[{len(raw) - 1}].role", "the prompt must end with a user or tool message"))
        return ()
    # Earlier assistant turns are context: only the compared answers are scored.
    return tuple(Message(m.role, m.content, 0) if m.role == "assistant" else m for m in messages)


def _answer(raw, field: str, problems: list[Problem], validators=None) -> Message | None:
    if isinstance(raw, str):
        content = message_content(raw, field, problems)
        return None if content is None else Message("assistant", content)
    if not isinstance(raw, list) or len(raw) != 1:
        got = f"{len(raw)} messages" if isinstance(raw, list) else json_type(raw)
        problems.append((field, f"expected one assistant message, got {got}"))
        return None
    before = len(problems)
    message = parse_message(0, raw[0], problems, field, validators)
    if n_errors(problems[before:]):
        return None
    if message.role != "assistant":
        problems.append((f"{field}[0].role", f"the answer must be an assistant message, not {message.role}"))
        return None
    return message


def _pair(line: int, prompt, chosen, rejected, fmt: str, problems: list[Problem], tools=(), parallel=True):
    if n_errors(problems):
        return None, problems
    if (chosen.content.strip(), chosen.tool_calls) == (rejected.content.strip(), rejected.tool_calls):
        problems.append((_SIDES[fmt][1], f"identical to {_SIDES[fmt][0]}: the pair prefers nothing"))
        return None, problems
    for side, answer in zip(_SIDES[fmt], (chosen, rejected), strict=True):
        if len(answer.tool_calls) > 1 and not parallel:
            reason = f"{len(answer.tool_calls)} calls in one turn, but parallel_tool_calls is false"
            problems.append((f"{side}[0].tool_calls", reason))
    if n_errors(problems):
        return None, problems
    calls = (chosen.tool_calls, rejected.tool_calls)
    return PreferencePair(line, prompt, chosen.content, rejected.content, *calls, tools, parallel), problems


def _from_openai(line: int, obj: dict):
    problems: list[Problem] = []
    prompt: tuple[Message, ...] = ()
    tools, validators, parallel = (), None, True
    source = obj["input"]
    if not isinstance(source, dict):
        problems.append(("input", f"expected an object, got {json_type(source)}"))
    else:
        key_problems = check_keys(source, ("messages",), ("tools", "functions", "parallel_tool_calls"))
        problems += [(f"input.{key}", reason) for key, reason in key_problems]
        if not key_problems:
            found: list[Problem] = []
            tools, validators = read_tools(source, found)
            parallel = source.get("parallel_tool_calls", True)
            if not isinstance(parallel, bool):
                found.append(("parallel_tool_calls", f"expected true or false, got {json_type(parallel)}"))
            problems += [(f"input.{field}", *rest) for field, *rest in found]
            if isinstance(source["messages"], str):
                problems.append(("input.messages", "expected an array of messages, got string"))
            else:
                prompt = _prompt(source["messages"], "input.messages", problems, validators)
    chosen = _answer(obj["preferred_output"], "preferred_output", problems, validators)
    rejected = _answer(obj["non_preferred_output"], "non_preferred_output", problems, validators)
    return _pair(line, prompt, chosen, rejected, "openai_dpo", problems, tools, parallel is not False)


def _from_chosen_rejected(line: int, obj: dict):
    problems: list[Problem] = []
    prompt = _prompt(obj["prompt"], "prompt", problems)
    chosen = _answer(obj["chosen"], "chosen", problems)
    rejected = _answer(obj["rejected"], "rejected", problems)
    return _pair(line, prompt, chosen, rejected, "chosen_rejected", problems)


_CONVERTERS = {"openai_dpo": _from_openai, "chosen_rejected": _from_chosen_rejected}


def tokenize_pair(tokenizer, pair: PreferencePair, max_seq_len: int) -> TokenizedPair:
    """Both sides, dropping whole leading turns of the prompt (after any system message) until the
    longer side fits; if even the last user turn is too long, the sides are cut at max_seq_len."""
    head = pair.prompt[:1] if pair.prompt[0].role == "system" else ()
    body = pair.prompt[len(head) :]
    starts = [i for i, m in enumerate(body) if m.role == "user"]
    for start in starts:
        shortened = replace(pair, prompt=head + body[start:])
        sides = [tokenize_example(tokenizer, shortened.side(preferred), max_seq_len) for preferred in (True, False)]
        if max(s.original_length for s in sides) <= max_seq_len:
            break
    return TokenizedPair(sides[0], sides[1], pair.line, start)


def _labels(example: TokenizedExample) -> int:
    return sum(label != IGNORE_INDEX for label in example.labels)


def _pair_issues(data: LoadedData, tokenized: list[TokenizedPair], max_seq_len: int) -> list[LineError]:
    issues = []
    for item in tokenized:
        for name, side in (("chosen", item.chosen), ("rejected", item.rejected)):
            if not _labels(side):
                reason = f"{name}: no answer tokens left in the first {max_seq_len} tokens: pair skipped"
                issues.append(LineError(data.path, item.line, None, reason, severity="warning"))
            elif side.original_length > max_seq_len:
                reason = f"{name}: {side.original_length} tokens > max_seq_len {max_seq_len}: answer truncated"
                issues.append(LineError(data.path, item.line, None, reason, severity="warning"))
        if item.dropped_turns:
            reason = f"prompt too long for max_seq_len {max_seq_len}: its first {item.dropped_turns} turns are dropped"
            issues.append(LineError(data.path, item.line, None, reason, severity="warning"))
    return issues


def _pair_content(pair: PreferencePair):
    return replace(pair, line=0)


def _report(data: LoadedData, tokenized: list[TokenizedPair], max_seq_len: int, extra=()) -> ValidationReport:
    issues = data.errors + _pair_issues(data, tokenized, max_seq_len)
    issues += duplicates(data, _pair_content) + list(extra)
    issues.sort(key=lambda issue: issue.line)
    sides = [side for item in tokenized for side in (item.chosen, item.rejected)]
    return ValidationReport(data.path, data.format, len(data.examples), issues, token_stats(sides), None)


def validate_pairs(
    train: LoadedData,
    tokenizer,
    max_seq_len: int,
    validation: LoadedData | None = None,
    batch_size: int = 1,
    grad_accum: int = 1,
) -> tuple[ValidationReport, ValidationReport | None, list[TokenizedPair], list[TokenizedPair]]:
    """`validate_dataset` for pairs: reports (token statistics per side) and the tokenized pairs."""
    train_pairs = [tokenize_pair(tokenizer, p, max_seq_len) for p in train.examples]
    train_report = _report(train, train_pairs, max_seq_len)
    train_pairs = _scored(train_pairs)
    train_report.steps_per_epoch = -(-len(train_pairs) // (batch_size * grad_accum))
    if validation is None:
        return train_report, None, train_pairs, []
    val_pairs = [tokenize_pair(tokenizer, p, max_seq_len) for p in validation.examples]
    val_report = _report(validation, val_pairs, max_seq_len, overlap(train, validation, _pair_content))
    return train_report, val_report, train_pairs, _scored(val_pairs)


def _scored(pairs: list[TokenizedPair]) -> list[TokenizedPair]:
    """The pairs with answer tokens on both sides: the others cannot be compared (a warning said so)."""
    return [p for p in pairs if _labels(p.chosen) and _labels(p.rejected)]
