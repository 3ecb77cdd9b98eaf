"""Read training data in the common fine-tuning formats into one shape: a list of `Example`.

A bad line never stops the read: it becomes a `LineError` so that `tunesmith validate` can list
every problem in one pass. Only whole-file problems (missing, unreadable, empty, undetectable)
raise `TunesmithError`.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from jsonschema import SchemaError

from tunesmith.chat.messages import Message
from tunesmith.chat.schemas import arguments_problem, schema_problem, schema_validator
from tunesmith.chat.tools import Tool, ToolCall
from tunesmith.data.sharegpt import sharegpt_as_openai, sharegpt_field
from tunesmith.errors import TunesmithError

FORMATS = ("messages", "sharegpt", "prompt_completion", "alpaca", "csv", "text")
ROLES = ("system", "user", "assistant", "tool", "function")  # function: OpenAI's legacy tool result
CSV_COLUMNS = ("prompt", "completion", "system")

# (required keys, optional keys) per JSON format; any other key is an error, as in OpenAI's API,
# because a misspelt key ("completions") would otherwise silently drop data.
_KEYS = {
    "messages": (("messages",), ("tools", "functions", "parallel_tool_calls")),
    "sharegpt": (("conversations",), ("tools", "system")),
    "prompt_completion": (("prompt", "completion"), ()),
    "alpaca": (("instruction", "output"), ("input",)),
    "text": (("text",), ()),
}
_MESSAGE_KEYS = (("role",), ("content", "weight", "tool_calls", "function_call", "tool_call_id", "name"))
# Keys that only preference data has (data/preference.py reads it).
PAIR_KEYS = {"preferred_output", "non_preferred_output", "chosen", "rejected"}

# (field, reason) before the line and path are known; (field, reason, "warning") for one that
# does not stop the example.
Problem = tuple


def n_errors(problems: list[Problem]) -> int:
    return sum(len(p) == 2 for p in problems)


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
    text = read_data_text(path)
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
    return _detect(path, read_data_text(path))


def read_data_text(path: str) -> str:
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
    return detect_from_records(path, (value for _, value in json_records(path, text)))


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
            ("sharegpt", {"conversations"}),
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


class BadJSON(str):
    """The json error message for a line that did not parse, told apart from a parsed string."""


def json_records(path: str, text: str):
    """Yield (line, parsed value or BadJSON) from a JSON array or JSON Lines text."""
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
    for line, value in json_records(path, text):
        item, problems = record_item(path, line, value, keys, convert)
        errors += problems
        if item is not None:
            items.append(item)
    return items, errors


def record_item(path: str, line: int, value, keys: tuple, convert) -> tuple[object, list[LineError]]:
    """One parsed record (a JSON object, or a Parquet / datasets row as a dict) converted by
    `convert(line, obj) -> (item, problems)`, or its errors."""
    if isinstance(value, BadJSON):
        problems = [(None, str(value))]
    elif not isinstance(value, dict):
        problems = [(None, f"expected a JSON object, got {json_type(value)}")]
    else:
        problems = check_keys(value, *keys)
        if not problems:
            item, problems = convert(line, value)
    issues = [LineError(path, line, *problem) for problem in problems]
    return (None if n_errors(problems) else item), issues


def record_example(path: str, line: int, value, fmt: str) -> tuple[Example | None, list[LineError]]:
    """One parsed record of a prompt/chat/text format as an example, or its errors."""
    content, issues = record_item(path, line, value, _KEYS[fmt], lambda _, obj: _CONVERTERS[fmt](obj))
    if content is None:
        return None, issues
    if isinstance(content, str):
        return Example(line, text=content), issues
    if isinstance(content, dict):  # a chat with tools
        return Example(line, **content), issues
    return Example(line, messages=content), issues


def _read_json(path: str, text: str, fmt: str) -> tuple[list[Example], list[LineError]]:
    examples, errors = [], []
    for line, value in json_records(path, text):
        example, problems = record_example(path, line, value, fmt)
        errors += problems
        if example is not None:
            examples.append(example)
    return examples, errors


def json_line(raw: str):
    """One JSON Lines record: the parsed value, or a BadJSON naming why it did not parse."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        return BadJSON(f"invalid JSON: {e.msg} (column {e.colno})")


def check_keys(obj: dict, required: tuple[str, ...], optional: tuple[str, ...]) -> list[Problem]:
    allowed = required + optional
    problems: list[Problem] = [(k, "missing key") for k in required if k not in obj]
    return problems + [(k, f"unknown key (expected {', '.join(allowed)})") for k in obj if k not in allowed]


def json_type(value) -> str:
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


def message_content(value, field: str, problems: list[Problem]) -> str | None:
    if not isinstance(value, str):
        problems.append((field, f"expected a string, got {json_type(value)}"))
    elif not value.strip():
        problems.append((field, "empty content"))
    else:
        return value
    return None


def _from_messages(obj: dict):
    chat, problems = read_chat(obj)
    if chat is None:
        return None, problems
    problems += _conversation_problems(chat.messages)
    if n_errors(problems) or not chat.tools:
        return chat.messages, problems
    return {"messages": chat.messages, "tools": chat.tools, "parallel_tool_calls": chat.parallel_tool_calls}, problems


def read_chat(obj: dict) -> tuple[Example | None, list[Problem]]:
    """OpenAI's `{messages, tools | functions, parallel_tool_calls}` (a training line, or a chat
    completion request's body) checked as a conversation, with no answer required, or its problems."""
    raw = obj.get("messages")
    if not isinstance(raw, list):
        return None, [("messages", f"expected an array, got {json_type(raw)}" if "messages" in obj else "missing key")]
    if not raw:
        return None, [("messages", "empty conversation")]
    problems: list[Problem] = []
    tools, validators = read_tools(obj, problems)
    parallel = obj.get("parallel_tool_calls", True)
    if not isinstance(parallel, bool):
        problems.append(("parallel_tool_calls", f"expected true or false, got {json_type(parallel)}"))
    messages = tuple(parse_message(i, m, problems, validators=validators) for i, m in enumerate(raw))
    if n_errors(problems):
        return None, problems
    problems += call_problems(messages, parallel is not False)
    if n_errors(problems):
        return None, problems
    return Example(0, messages, tools=tools, parallel_tool_calls=parallel is not False), problems


def read_tools(obj: dict, problems: list[Problem]) -> tuple[tuple[Tool, ...], dict | None]:
    """The tools of `obj` (OpenAI's `tools`, or the legacy `functions`), and a validator of each
    one's arguments by name (None where the tools themselves have problems: calls go unchecked)."""
    if "tools" in obj and "functions" in obj:
        problems.append(("functions", "give tools or the legacy functions, not both"))
        return (), None
    key = "functions" if "functions" in obj else "tools"
    raw = obj.get(key, [])
    if not isinstance(raw, list):
        problems.append((key, f"expected an array, got {json_type(raw)}"))
        return (), None
    before, tools, validators, first = len(problems), [], {}, {}
    for i, item in enumerate(raw):
        where = f"{key}[{i}]"
        if key == "tools":
            if not isinstance(item, dict) or item.get("type", "function") != "function" or "function" not in item:
                problems.append((where, 'expected {"type": "function", "function": {name, description, parameters}}'))
                continue
            item, where = item["function"], f"{where}.function"
        tool = _tool(item, where, problems, validators)
        if tool is None:
            continue
        if tool.name in first:
            problems.append((f"{where}.name", f"duplicate tool name {tool.name!r} (also {first[tool.name]})"))
        first.setdefault(tool.name, where)
        tools.append(tool)
    return tuple(tools), (validators if len(problems) == before else None)


def _tool(raw, where: str, problems: list[Problem], validators: dict) -> Tool | None:
    if not isinstance(raw, dict):
        problems.append((where, f"expected an object, got {json_type(raw)}"))
        return None
    name, description, parameters = raw.get("name"), raw.get("description", ""), raw.get("parameters", {})
    if not isinstance(name, str) or not name.strip():
        problems.append((f"{where}.name", "expected a non-empty string" if "name" in raw else "missing key"))
        return None
    if not isinstance(description, str):
        problems.append((f"{where}.description", f"expected a string, got {json_type(description)}"))
    if not isinstance(parameters, dict):
        problems.append((f"{where}.parameters", f"expected a JSON Schema object, got {json_type(parameters)}"))
        return None
    try:
        validators[name] = schema_validator(parameters)
    except SchemaError as error:
        problems.append((f"{where}.parameters", schema_problem(error)))
        return None
    return Tool(name, description if isinstance(description, str) else "", parameters)


def parse_message(i: int, raw, problems: list[Problem], field: str = "messages", validators=None) -> Message | None:
    """One message; `validators` (tool name -> validator; None: unknown) check its calls."""
    where, before = f"{field}[{i}]", len(problems)
    if not isinstance(raw, dict):
        problems.append((where, f"expected an object, got {json_type(raw)}"))
        return None
    key_problems = check_keys(raw, *_MESSAGE_KEYS)
    if key_problems:
        problems += [(f"{where}.{key}", reason) for key, reason in key_problems]
        return None
    role, weight = raw["role"], raw.get("weight", 1)
    if not isinstance(role, str):
        problems.append((f"{where}.role", f"expected a string, got {json_type(role)}"))
        return None
    if role not in ROLES:
        problems.append((f"{where}.role", f"unknown role {role!r} (expected {', '.join(ROLES)})"))
        return None
    if "weight" in raw and role != "assistant":
        problems.append((f"{where}.weight", f"weight is only allowed on assistant messages, not {role}"))
    # bool is an int in Python, but `true` is not a valid weight in OpenAI's format either.
    if isinstance(weight, bool) or weight not in (0, 1):
        problems.append((f"{where}.weight", f"weight must be 0 or 1, got {json.dumps(weight)}"))
    for key in ("tool_calls", "function_call"):
        if key in raw and role != "assistant":
            problems.append((f"{where}.{key}", f"only assistant messages call tools, not {role}"))
    calls = _calls(raw, where, problems, validators) if role == "assistant" else ()
    if calls is None:
        return None
    if calls and raw.get("content") in (None, ""):  # OpenAI: content null beside tool_calls
        content = ""
    elif "content" not in raw:
        problems.append((f"{where}.content", "missing key"))
        return None
    else:
        content = message_content(raw["content"], f"{where}.content", problems)
    call_id, name = raw.get("tool_call_id"), raw.get("name")
    if role == "tool" and not isinstance(call_id, str):
        got = "missing key" if call_id is None else f"expected a string, got {json_type(call_id)}"
        problems.append((f"{where}.tool_call_id", got))
    if role == "function" and not isinstance(name, str):
        problems.append((f"{where}.name", "a function result names its function: missing key"))
    if content is None or n_errors(problems[before:]):
        return None
    if role == "function":  # the legacy form of a tool result
        return Message("tool", content, name=name)
    if role == "tool":
        return Message("tool", content, tool_call_id=call_id, name=name if isinstance(name, str) else None)
    return Message(role, content, weight, calls)


def _calls(raw: dict, where: str, problems: list[Problem], validators) -> tuple[ToolCall, ...] | None:
    """The assistant's calls (`tool_calls`, or the legacy `function_call`), checked against the
    tools' schemas; None if any is unreadable."""
    if "tool_calls" in raw and "function_call" in raw:
        problems.append((f"{where}.function_call", "give tool_calls or the legacy function_call, not both"))
        return None
    if "function_call" in raw:
        items = [(f"{where}.function_call", raw["function_call"], None)]
    elif "tool_calls" in raw:
        listed = raw["tool_calls"]
        if not isinstance(listed, list) or not listed:
            got = "an empty array" if listed == [] else json_type(listed)
            problems.append((f"{where}.tool_calls", f"expected an array of calls, got {got}"))
            return None
        items = []
        for j, call in enumerate(listed):
            at = f"{where}.tool_calls[{j}]"
            if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
                problems.append((at, 'expected {"id", "type": "function", "function": {name, arguments}}'))
                return None
            if not isinstance(call.get("id", ""), str):
                problems.append((f"{at}.id", f"expected a string, got {json_type(call['id'])}"))
                return None
            items.append((f"{at}.function", call["function"], call.get("id")))
    else:
        return ()
    calls = [_call(at, function, call_id, problems, validators) for at, function, call_id in items]
    return None if None in calls else tuple(calls)


def _call(at: str, raw, call_id, problems: list[Problem], validators) -> ToolCall | None:
    if not isinstance(raw, dict):
        problems.append((at, f"expected an object, got {json_type(raw)}"))
        return None
    name, arguments = raw.get("name"), raw.get("arguments", "{}")
    if not isinstance(name, str):
        problems.append((f"{at}.name", "missing key" if name is None else f"expected a string, got {json_type(name)}"))
        return None
    if isinstance(arguments, str):  # OpenAI's form: a JSON string
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError as e:
            problems.append((f"{at}.arguments", f"not valid JSON: {e.msg} (column {e.colno})"))
            return None
    if not isinstance(arguments, dict):
        problems.append((f"{at}.arguments", f"expected a JSON object, got {json_type(arguments)}"))
        return None
    if validators is not None:
        if name not in validators:
            declared = ", ".join(validators) or "none"
            problems.append((f"{at}.name", f"calls {name!r}, which is not a declared tool (declared: {declared})"))
            return None
        mismatch = arguments_problem(validators[name], arguments)
        if mismatch:  # a warning: such data is common (Glaive's) and still teaches the call's form
            problems.append((f"{at}.arguments", f"do not match the parameters of {name}: {mismatch}", "warning"))
    return ToolCall(name, arguments, call_id)


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


def call_problems(messages: tuple[Message, ...], parallel: bool) -> list[Problem]:
    """Each tool result answers a call made earlier in the conversation; one call per turn where
    the example forbids parallel calls."""
    ids, names, problems = set(), set(), []
    for i, m in enumerate(messages):
        if len(m.tool_calls) > 1 and not parallel:
            problems.append(
                (
                    f"messages[{i}].tool_calls",
                    f"{len(m.tool_calls)} calls in one turn, but parallel_tool_calls is false",
                )
            )
        ids |= {c.id for c in m.tool_calls if c.id}
        names |= {c.name for c in m.tool_calls}
        if m.role != "tool":
            continue
        if m.tool_call_id is not None and m.tool_call_id not in ids:
            problems.append(
                (f"messages[{i}].tool_call_id", f"{m.tool_call_id!r} answers no earlier call of this conversation")
            )
        elif m.tool_call_id is None and m.name not in names:
            problems.append((f"messages[{i}].name", f"{m.name!r} answers no earlier call of this conversation"))
    return problems


def _from_sharegpt(obj: dict):
    converted, fields = sharegpt_as_openai(obj)
    if isinstance(converted, list):  # problems of the ShareGPT structure itself
        return None, converted
    example, problems = _from_messages(converted)
    return example, [(sharegpt_field(field, fields), *rest) for field, *rest in problems]


def _chat(prompt: str, completion: str, system: str | None = None) -> tuple[Message, ...]:
    head = (Message("system", system),) if system else ()
    return head + (Message("user", prompt), Message("assistant", completion))


def _from_prompt_completion(obj: dict):
    problems: list[Problem] = []
    prompt = message_content(obj["prompt"], "prompt", problems)
    completion = message_content(obj["completion"], "completion", problems)
    return (None, problems) if problems else (_chat(prompt, completion), [])


def _from_alpaca(obj: dict):
    problems: list[Problem] = []
    instruction = message_content(obj["instruction"], "instruction", problems)
    output = message_content(obj["output"], "output", problems)
    extra = obj.get("input", "")
    if not isinstance(extra, str):
        problems.append(("input", f"expected a string, got {json_type(extra)}"))
    if problems:
        return None, problems
    prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    return _chat(prompt, output), []


def _from_text(obj: dict):
    problems: list[Problem] = []
    return message_content(obj["text"], "text", problems), problems


_CONVERTERS = {
    "messages": _from_messages,
    "sharegpt": _from_sharegpt,
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
    prompt = message_content(cells["prompt"], mapping["prompt"], problems)
    completion = message_content(cells["completion"], mapping["completion"], problems)
    if problems:
        return None, [LineError(path, line, field, reason) for field, reason in problems]
    return Example(line, messages=_chat(prompt, completion, cells.get("system"))), []


def csv_mapping(path: str, header: list[str], columns: dict[str, str] | None) -> dict[str, str]:
    if columns is None:
        if not {"prompt", "completion"} <= set(header):
            prompt, completion = [*header, "COLUMN", "COLUMN"][:2]  # the header's own names make the example
            raise TunesmithError(
                f"{path}: CSV needs a column mapping naming its prompt and completion columns: "
                f"`--columns prompt={prompt},completion={completion}` (validate) or "
                f"`columns: {{prompt: {prompt}, completion: {completion}}}` under `data:` (config); "
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


def split_prompt(messages: Sequence[Message]) -> tuple[tuple[Message, ...], str] | None:
    """(messages before the last assistant turn, that turn's text); None if there is no answer."""
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].role == "assistant":
            return tuple(messages[:i]), messages[i].content
    return None
