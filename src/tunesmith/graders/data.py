"""OpenAI's reinforcement fine-tuning JSONL: one prompt per line, graded by a grader.

A record is ``{"messages": [... ending in a user turn], "tools"?: [...], "parallel_tool_calls"?: bool,
"response_format"?: {...}, <any item fields>}``: every key besides those is an item field the
grader may reference (``{{item.reference_answer}}``, ``item["slots"]`` in a python
grader). Given the grader, a record lacking a field it references is an error naming the file,
line and field, found before training instead of as a reward of 0 an hour into it. Tools are
checked as a training line's are (data.formats.read_tools), and ``response_format`` as the
service checks it: text, json_object, or json_schema with a schema constrained decoding supports.

A prompt is asked as SFT, evaluation and the service ask it (``prompt_ids``: its tools offered in
the chat rendering of chat/render.py), its answer held to ``response_format`` (``answer_grammar``)
and read back with its tool calls (grade.answer_sample). Bad lines are
LineErrors like the other formats'; ``check`` keeps the first of them and counts the rest
(data/issues.py).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

from tunesmith.chat.tools import Tool
from tunesmith.data.formats import (
    BadJSON,
    LineError,
    LoadedData,
    Message,
    Problem,
    json_records,
    json_type,
    parse_message,
    read_data_text,
    read_tools,
)
from tunesmith.data.issues import IssueLog
from tunesmith.data.tokenize import encode_chat
from tunesmith.errors import TunesmithError
from tunesmith.graders.schema import Grader, Multi, Python, ScoreModel
from tunesmith.graders.templates import TemplateError, lookup, references

FORMAT = "reinforcement"


@dataclass(frozen=True)
class GradedPrompt:
    line: int
    messages: tuple[Message, ...]  # ends with the user turn the model answers
    item: dict  # the whole record: the grader's item namespace
    tools: tuple[Tool, ...] = ()
    response_format: dict | None = None
    parallel_tool_calls: bool = True


def prompt_ids(tokenizer, prompt: GradedPrompt) -> list[int]:
    """The prompt's token ids as SFT, evaluation and the service render it, its tools offered."""
    return encode_chat(tokenizer, prompt.messages, prompt.tools, prompt.parallel_tool_calls)


class FormatProblem(ValueError):
    def __init__(self, where: str, reason: str):
        super().__init__(f"{where}: {reason}")
        self.where, self.reason = where, reason


def answer_grammar(response_format: dict | None):
    """The grammar (tunesmith.constrained, uncompiled) ``response_format`` holds an answer to: None
    for free text; FormatProblem naming the field when it is not a format the service accepts."""
    from jsonschema import SchemaError

    from tunesmith.chat.schemas import schema_problem, schema_validator
    from tunesmith.constrained import json_schema_grammar

    kind = (response_format or {}).get("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":
        return json_schema_grammar({"type": "object"})
    if kind != "json_schema":
        raise FormatProblem("response_format.type", f"expected text, json_object or json_schema, got {kind!r}")
    spec = response_format.get("json_schema")
    schema = spec.get("schema", {}) if isinstance(spec, dict) else None
    where = "response_format.json_schema.schema"
    if not isinstance(schema, dict):
        raise FormatProblem(where if isinstance(spec, dict) else "response_format.json_schema", "expected an object")
    try:
        schema_validator(schema)
    except SchemaError as error:
        raise FormatProblem(where, schema_problem(error)) from None
    try:
        return json_schema_grammar(schema)
    except Exception as error:  # xgrammar raises its own types for schemas it cannot compile
        raise FormatProblem(where, f"not supported for constrained decoding: {error}") from None


def item_fields(grader: Grader) -> list[tuple[str, ...]]:
    """Paths inside the item that ``grader`` always reads: its templates' ``{{item.…}}`` and, in a
    python grader, ``item["key"]`` subscripts (``item.get`` is optional by its nature)."""
    if isinstance(grader, Multi):
        return list(dict.fromkeys(p for sub in grader.graders.values() for p in item_fields(sub)))
    if isinstance(grader, Python):
        return _subscripts(grader.source)
    texts = [m.text() for m in grader.input] if isinstance(grader, ScoreModel) else [grader.input, grader.reference]
    return list(dict.fromkeys(path for t in texts for namespace, path in references(t) if namespace == "item"))


def _subscripts(source: str) -> list[tuple[str, ...]]:
    """``item["a"]["b"]`` paths the grade function reads, less those it guards: a key it tests
    (``"a" in item``) or reads with ``item.get("a")``, and any read inside a ``try``."""
    grade = next(n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name == "grade")
    if len(grade.args.args) < 2:
        return []
    name = grade.args.args[1].arg

    def is_item(node) -> bool:
        return isinstance(node, ast.Name) and node.id == name

    guarded, excused = set(), set()
    for node in ast.walk(grade):
        if (
            isinstance(node, ast.Compare)
            and isinstance(node.left, ast.Constant)
            and any(map(is_item, node.comparators))
        ):
            guarded.add(str(node.left.value))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and is_item(node.func.value):
            guarded.update(str(a.value) for a in node.args[:1] if isinstance(a, ast.Constant))
        elif isinstance(node, ast.Try):
            excused.update(id(inner) for statement in node.body for inner in ast.walk(statement))
    paths = []
    for node in ast.walk(grade):
        steps, top = [], node
        while isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
            steps.append(str(node.slice.value))
            node = node.value
        if steps and is_item(node) and id(top) not in excused and steps[-1] not in guarded:
            paths.append(tuple(reversed(steps)))
    # item["a"]["b"] is walked as item["a"]["b"] and again as item["a"]: keep the longest.
    return [p for p in dict.fromkeys(paths) if not any(q != p and q[: len(p)] == p for q in paths)]


def _record(required: list[tuple[str, ...]]):
    def convert(line: int, obj: dict):
        problems: list[Problem] = []
        raw = obj["messages"]
        messages: list[Message] = []
        if not isinstance(raw, list) or not raw:
            problems.append(("messages", f"expected a non-empty array of messages, got {json_type(raw)}"))
        else:
            # "developer" is OpenAI's newer name for the system turn.
            turns = [
                {**m, "role": "system"} if isinstance(m, dict) and m.get("role") == "developer" else m for m in raw
            ]
            messages = [parse_message(i, m, problems) for i, m in enumerate(turns)]
            if not problems and messages[-1].role != "user":
                problems.append((f"messages[{len(raw) - 1}].role", "the prompt must end with a user message"))
        tools, _ = read_tools(obj, problems)
        parallel = obj.get("parallel_tool_calls", True)
        if not isinstance(parallel, bool):
            problems.append(("parallel_tool_calls", f"expected true or false, got {json_type(parallel)}"))
        response_format = obj.get("response_format")
        if response_format is not None and not isinstance(response_format, dict):
            problems.append(("response_format", f"expected an object, got {json_type(response_format)}"))
        elif response_format is not None:
            try:
                answer_grammar(response_format)
            except FormatProblem as problem:
                problems.append((problem.where, problem.reason))
        for path in required:
            try:
                lookup(obj, "item", path)
            except TemplateError as error:
                problems.append((".".join(path), f"the grader reads this field: {str(error).split(': ', 1)[1]}"))
        if problems:
            return None, problems
        return GradedPrompt(line, tuple(messages), obj, tools, response_format, parallel is not False), []

    return convert


def read_graded(path, grader: Grader | None = None) -> LoadedData:
    """Every valid prompt of the file (``examples`` holds GradedPrompts); a bad line is LineErrors,
    a line lacking a field ``grader`` reads among them."""
    path = str(path)
    text = read_data_text(path)
    required = item_fields(grader) if grader is not None else []
    convert, items, errors = _record(required), [], []
    # Not formats.read_records: any key besides messages is an item field, not an unknown key.
    for line, value in json_records(path, text):
        if isinstance(value, BadJSON):
            problems = [(None, str(value))]
        elif not isinstance(value, dict):
            problems = [(None, f"expected a JSON object, got {json_type(value)}")]
        elif "messages" not in value:
            problems = [("messages", "missing key")]
        else:
            item, problems = convert(line, value)
        errors += [LineError(path, line, where, reason) for where, reason in problems]
        if not problems:
            items.append(item)
    if not items and not errors:
        raise TunesmithError(f"{path}: no examples")
    return LoadedData(path, FORMAT, items, errors)


def check(path, grader: Grader | None = None) -> tuple[LoadedData, list[LineError], dict[str, int]]:
    """read_graded, and its problems as data/issues.py reports them: the first ones listed whole,
    the rest counted by kind."""
    data = read_graded(path, grader)
    log = IssueLog((data.path,))
    log.extend(data.errors)
    listed, counts = log.done()
    return data, listed, counts
