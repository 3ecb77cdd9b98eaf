"""Read training data in the common fine-tuning formats into one shape: a list of `Example`.

A bad line never stops the read: it becomes a `LineError` so that `tunesmith validate` can list
every problem in one pass. Only whole-file problems (missing, unreadable, empty, undetectable)
raise `TunesmithError`.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tunesmith.chat.messages import Message
from tunesmith.chat.tools import Tool
from tunesmith.errors import TunesmithError

FORMATS = ("messages", "prompt_completion", "alpaca", "csv", "text")
ROLES = ("system", "user", "assistant")
CSV_COLUMNS = ("prompt", "completion", "system")

# (required keys, optional keys) per JSON format; any other key is an error, as in OpenAI's API,
# because a misspelt key ("completions") would otherwise silently drop data.
_KEYS = {
    "messages": (("messages",), ()),
    "prompt_completion": (("prompt", "completion"), ()),
    "alpaca": (("instruction", "output"), ("input",)),
    "text": (("text",), ()),
}
_MESSAGE_KEYS = (("role", "content"), ("weight",))
# Keys that only preference data has (data/preference.py reads it).
PAIR_KEYS = {"preferred_output", "non_preferred_output", "chosen", "rejected"}

Problem = tuple[str | None, str]  # (field, reason) before the line and path are known


@dataclass(frozen=True)
class Example:
    line: int  # 1-based: JSONL/CSV physical line, JSON array index, .txt paragraph start
    messages: tuple[Message, ...] = ()
    text: str | None = None  # raw text format: loss on every token
    tools: tuple[Tool, ...] = ()  # the functions the assistant may call
    parallel_tool_calls: bool = True  # OpenAI's per-example flag: may one turn make several calls


@dataclass(frozen=True)
class LineError:
    path: str
    line: int
    field: str | None
    reason: str
    severity: str = "error"  # "error" | "warning"

    @property
    def message(self) -> str:
        """The problem without its location, e.g. "messages[1].role: unknown role 'bot'"."""
        prefix = "warning: " if self.severity == "warning" else ""
        return f"{prefix}{self.field}: {self.reason}" if self.field else f"{prefix}{self.reason}"

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


@dataclass
class LoadedData:
    path: str
    format: str
    examples: list[Example]
    errors: list[LineError]


def read_examples(path, format: str = "auto", columns: dict[str, str] | None = None) -> LoadedData:
    """Read one data file; format "auto" detects it from the extension and the first object's keys."""
    path = str(path)
    if format != "auto" and format not in FORMATS:
        raise TunesmithError(f"unknown data format {format!r} (expected auto, {', '.join(FORMATS)})")
    text = _read_text(path)
    if format == "auto":
        format = _detect(path, text)
    if columns is not None and format != "csv":
        raise TunesmithError(f"{path}: a column mapping only applies to CSV files, not {format}")
    if format == "csv":
        examples, errors = _read_csv(path, text, columns)
    elif format == "text" and Path(path).suffix.lower() == ".txt":
        examples, errors = _read_paragraphs(text), []
    else:
        examples, errors = _read_json(path, text, format)
    # A file whose every line is bad still returns, so `validate` can name every line.
    if not examples and not errors:
        raise TunesmithError(f"{path}: no examples")
    return LoadedData(path, format, examples, errors)


def detect_format(path) -> str:
    path = str(path)
    return _detect(path, _read_text(path))


def _read_text(path: str) -> str:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise TunesmithError(f"data file not found: {path}") from None
    except OSError as e:
        raise TunesmithError(f"cannot read data file {path}: {e.strerror}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise TunesmithError(
            f"{path}:{line}: not valid UTF-8 (byte 0x{data[e.start]:02x}); save the file as UTF-8"
        ) from None
    if not text.strip():
        raise TunesmithError(f"{path}: no examples (the file is empty)")
    return text


def _detect(path: str, text: str) -> str:
    suffix = Path(path).suffix.lower()
    if suffix in (".csv", ".txt"):
        return "csv" if suffix == ".csv" else "text"
    return detect_from_records(path, (value for _, value in _json_records(path, text)))


def detect_from_records(path: str, values) -> str:
    """The format of JSON-like records (objects, or rows as dicts) from the first one that has a known key."""
    first_keys = None
    for value in values:
        if not isinstance(value, dict):
            continue
        keys = set(value)
        if keys & PAIR_KEYS:
            raise TunesmithError(
                f"{path} holds preference pairs (keys {', '.join(sorted(keys))}): train on them with method.name=dpo"
            )
        # Loose signatures on purpose: a line missing one key should be reported as that line's
        # error, not make the whole file undetectable.
        for fmt, signature in (
            ("messages", {"messages"}),
            ("alpaca", {"instruction", "output"}),
            ("prompt_completion", {"prompt", "completion"}),
            ("text", {"text"}),
        ):
            if keys & signature:
                return fmt
        first_keys = first_keys or sorted(keys)
    seen = f"the first object has keys {', '.join(first_keys)}" if first_keys else "no line is a JSON object"
    raise TunesmithError(
        f"cannot detect the format of {path}: {seen}; expected messages, prompt+completion, "
        f"instruction+output or text keys (or pass a format: {', '.join(FORMATS)})"
    )


class _BadJSON(str):
    """The json error message for a line that did not parse, told apart from a parsed string."""


def _json_records(path: str, text: str):
    """Yield (line, parsed value or _BadJSON) from a JSON array or JSON Lines text."""
    if text.lstrip().startswith("[") and not path.lower().endswith(".jsonl"):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise TunesmithError(f"{path}:{e.lineno}: invalid JSON array: {e.msg}") from None
        yield from enumerate(items, 1)
        return
    # Only "\n" ends a JSON Lines record: str.splitlines would also split on U+2028, which JSON
    # allows unescaped inside strings.
    for line, raw in enumerate(text.split("\n"), 1):
        if raw.strip():
            yield line, json_line(raw)


def read_records(path: str, text: str, keys: tuple, convert) -> tuple[list, list[LineError]]:
    """Every JSON record of `text` with `keys` (required, optional) converted by `convert(line, obj)
    -> (item, problems)`; every bad record becomes LineErrors instead."""
    items, errors = [], []
    for line, value in _json_records(path, text):
        item, problems = record_item(path, line, value, keys, convert)
        errors += problems
        if not problems:
            items.append(item)
    return items, errors


def record_item(path: str, line: int, value, keys: tuple, convert) -> tuple[object, list[LineError]]:
    """One parsed record (a JSON object, or a Parquet / datasets row as a dict) converted by
    `convert(line, obj) -> (item, problems)`, or its errors."""
    if isinstance(value, _BadJSON):
        problems = [(None, str(value))]
    elif not isinstance(value, dict):
        problems = [(None, f"expected a JSON object, got {_json_type(value)}")]
    else:
        problems = _check_keys(value, *keys)
        if not problems:
            item, problems = convert(line, value)
    if problems:
        return None, [LineError(path, line, field, reason) for field, reason in problems]
    return item, []


def record_example(path: str, line: int, value, fmt: str) -> tuple[Example | None, list[LineError]]:
    """One parsed record of a prompt/chat/text format as an example, or its errors."""
    content, errors = record_item(path, line, value, _KEYS[fmt], lambda _, obj: _CONVERTERS[fmt](obj))
    if errors:
        return None, errors
    if isinstance(content, str):
        return Example(line, text=content), []
    return Example(line, messages=content), []


def _read_json(path: str, text: str, fmt: str) -> tuple[list[Example], list[LineError]]:
    examples, errors = [], []
    for line, value in _json_records(path, text):
        example, problems = record_example(path, line, value, fmt)
        errors += problems
        if example is not None:
            examples.append(example)
    return examples, errors


def json_line(raw: str):
    """One JSON Lines record: the parsed value, or a _BadJSON naming why it did not parse."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        return _BadJSON(f"invalid JSON: {e.msg} (column {e.colno})")


def _check_keys(obj: dict, required: tuple[str, ...], optional: tuple[str, ...]) -> list[Problem]:
    allowed = required + optional
    problems: list[Problem] = [(k, "missing key") for k in required if k not in obj]
    return problems + [(k, f"unknown key (expected {', '.join(allowed)})") for k in obj if k not in allowed]


def _json_type(value) -> str:
    for kind, name in (
        (bool, "boolean"),
        (str, "string"),
        (int, "number"),
        (float, "number"),
        (list, "array"),
        (dict, "object"),
    ):
        if isinstance(value, kind):
            return name
    return "null"


def _content(value, field: str, problems: list[Problem]) -> str | None:
    if not isinstance(value, str):
        problems.append((field, f"expected a string, got {_json_type(value)}"))
    elif not value.strip():
        problems.append((field, "empty content"))
    else:
        return value
    return None


def _from_messages(obj: dict):
    raw = obj["messages"]
    if not isinstance(raw, list):
        return None, [("messages", f"expected an array, got {_json_type(raw)}")]
    if not raw:
        return None, [("messages", "empty conversation")]
    problems: list[Problem] = []
    messages = tuple(_message(i, m, problems) for i, m in enumerate(raw))
    if problems:
        return None, problems
    return messages, _conversation_problems(messages)


def _message(i: int, raw, problems: list[Problem], field: str = "messages") -> Message | None:
    where = f"{field}[{i}]"
    if not isinstance(raw, dict):
        problems.append((where, f"expected an object, got {_json_type(raw)}"))
        return None
    key_problems = _check_keys(raw, *_MESSAGE_KEYS)
    if key_problems:
        problems += [(f"{where}.{key}", reason) for key, reason in key_problems]
        return None
    role, weight = raw["role"], raw.get("weight", 1)
    content = _content(raw["content"], f"{where}.content", problems)
    if not isinstance(role, str):
        problems.append((f"{where}.role", f"expected a string, got {_json_type(role)}"))
    elif role not in ROLES:
        problems.append((f"{where}.role", f"unknown role {role!r} (expected {', '.join(ROLES)})"))
    elif "weight" in raw and role != "assistant":
        problems.append((f"{where}.weight", f"weight is only allowed on assistant messages, not {role}"))
    # bool is an int in Python, but `true` is not a valid weight in OpenAI's format either.
    if isinstance(weight, bool) or weight not in (0, 1):
        problems.append((f"{where}.weight", f"weight must be 0 or 1, got {json.dumps(weight)}"))
    return Message(role, content, weight) if content is not None else None


def _conversation_problems(messages: tuple[Message, ...]) -> list[Problem]:
    weights = [m.weight for m in messages if m.role == "assistant"]
    if messages[0].role == "assistant":
        # Chat templates render an assistant turn as the answer to what came before; with nothing
        # before it there is no prompt to split off.
        return [("messages[0].role", "a conversation cannot start with an assistant message")]
    if not weights:
        return [("messages", "no assistant message to train on")]
    if not any(weights):
        return [("messages", "every assistant message has weight 0: nothing to train on")]
    return []


def _chat(prompt: str, completion: str, system: str | None = None) -> tuple[Message, ...]:
    head = (Message("system", system),) if system else ()
    return head + (Message("user", prompt), Message("assistant", completion))


def _from_prompt_completion(obj: dict):
    problems: list[Problem] = []
    prompt = _content(obj["prompt"], "prompt", problems)
    completion = _content(obj["completion"], "completion", problems)
    return (None, problems) if problems else (_chat(prompt, completion), [])


def _from_alpaca(obj: dict):
    problems: list[Problem] = []
    instruction = _content(obj["instruction"], "instruction", problems)
    output = _content(obj["output"], "output", problems)
    extra = obj.get("input", "")
    if not isinstance(extra, str):
        problems.append(("input", f"expected a string, got {_json_type(extra)}"))
    if problems:
        return None, problems
    prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    return _chat(prompt, output), []


def _from_text(obj: dict):
    problems: list[Problem] = []
    return _content(obj["text"], "text", problems), problems


_CONVERTERS = {
    "messages": _from_messages,
    "prompt_completion": _from_prompt_completion,
    "alpaca": _from_alpaca,
    "text": _from_text,
}


def _read_paragraphs(text: str) -> list[Example]:
    return list(paragraphs(text.split("\n")))


def paragraphs(lines) -> Iterator[Example]:
    """Blank-line separated paragraphs of .txt lines (without their line ends), each an example."""
    start, held, number = 0, [], 0
    for number, raw in enumerate(lines, 1):
        if raw.strip():
            start = start or number
            held.append(raw)
        elif held:
            yield Example(start, text="\n".join(held))
            start, held = 0, []
    if held:
        yield Example(start, text="\n".join(held))


def csv_rows(path: str, lines, errors: list[LineError]) -> tuple[list[str], Iterator[tuple[int, list[str]]]]:
    """The header, and (line, cells) of each non-empty row; a row with the wrong field count goes to `errors`.

    `lines`: the CSV text, or a file opened with newline="" (read lazily)."""
    reader = csv.reader(io.StringIO(lines, newline="") if isinstance(lines, str) else lines)
    header = next(reader)

    def rows() -> Iterator[tuple[int, list[str]]]:
        row_start = reader.line_num + 1
        for row in reader:
            line, row_start = row_start, reader.line_num + 1  # a quoted cell may span several lines
            if not row:
                continue
            if len(row) != len(header):
                errors.append(LineError(path, line, None, f"expected {len(header)} fields, got {len(row)}"))
                continue
            yield line, row

    return header, rows()


def _read_csv(path: str, text: str, columns: dict[str, str] | None) -> tuple[list[Example], list[LineError]]:
    errors: list[LineError] = []
    header, rows = csv_rows(path, text, errors)
    mapping = csv_mapping(path, header, columns)
    index = {role: header.index(column) for role, column in mapping.items()}
    examples = []
    for line, row in rows:
        example, problems = csv_example(path, line, {role: row[i] for role, i in index.items()}, mapping)
        errors += problems
        if example is not None:
            examples.append(example)
    return examples, errors


def csv_example(path: str, line: int, cells: dict[str, str], mapping: dict[str, str]):
    """One CSV row, its cells keyed by role (prompt, completion, system), as an example or its errors."""
    problems: list[Problem] = []
    prompt = _content(cells["prompt"], mapping["prompt"], problems)
    completion = _content(cells["completion"], mapping["completion"], problems)
    if problems:
        return None, [LineError(path, line, field, reason) for field, reason in problems]
    return Example(line, messages=_chat(prompt, completion, cells.get("system"))), []


def csv_mapping(path: str, header: list[str], columns: dict[str, str] | None) -> dict[str, str]:
    if columns is None:
        if not {"prompt", "completion"} <= set(header):
            raise TunesmithError(
                f"{path}: CSV needs a column mapping, e.g. columns={{'prompt': ..., 'completion': ...}}; "
                f"its header has: {', '.join(header)}"
            )
        return {role: role for role in CSV_COLUMNS if role in header}
    unknown = sorted(set(columns) - set(CSV_COLUMNS))
    missing = [role for role in ("prompt", "completion") if role not in columns]
    if unknown or missing:
        raise TunesmithError(
            f"{path}: column mapping needs prompt and completion (optional system); "
            f"got {', '.join(sorted(columns)) or 'nothing'}"
        )
    for role, column in columns.items():
        if column not in header:
            raise TunesmithError(f"{path}:1: column {column!r} (for {role}) is not in the header: {', '.join(header)}")
    return dict(columns)


def with_system(messages: tuple[Message, ...] | list[Message], system: str | None) -> tuple[Message, ...]:
    """The conversation with `system` as its system prompt, unless it already has one."""
    if system and not any(m.role == "system" for m in messages):
        return (Message("system", system), *messages)
    return tuple(messages)
