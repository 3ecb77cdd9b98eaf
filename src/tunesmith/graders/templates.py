"""OpenAI's grader templates: ``{{ item.<path> }}`` and ``{{ sample.<field>[.<path>] }}``.

A path is JSON-path-like: dotted keys and list indices (``item.answers[0].text`` or
``item.answers.0.text``). A string value is inserted as it is, anything else as JSON. A field the
item or sample lacks is an error naming the whole reference and the first missing step.
"""

from __future__ import annotations

import json
import re

from tunesmith.errors import TunesmithError

NAMESPACES = ("item", "sample")
SAMPLE_FIELDS = ("output_text", "output_json", "output_tools", "choices")
_REFERENCE = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_WHOLE = re.compile(r"(\w+)((?:\.[^.\[\]\s]+|\[\d+\])*)")
_STEP = re.compile(r"\.([^.\[\]\s]+)|\[(\d+)\]")


class TemplateError(TunesmithError, ValueError):
    """A reference that names no field of the item or sample (or is not a reference at all)."""

    def __init__(self, message: str, reference: tuple[str, ...] = ()):
        super().__init__(message)
        self.reference = reference  # ("sample", "output_json", "city") when a lookup failed


def split_reference(reference: str) -> tuple[str, tuple[str, ...]]:
    """``"item.answers[0].text"`` -> ``("item", ("answers", "0", "text"))``; bad syntax is a TemplateError."""
    match = _WHOLE.fullmatch(reference.strip())
    namespace = match.group(1) if match else None
    path = tuple(key or index for key, index in _STEP.findall(match.group(2))) if match else ()
    if namespace not in NAMESPACES or not path:
        raise TemplateError(
            f"{{{{{reference}}}}}: a reference starts with item. or sample. and names a field "
            f"(e.g. {{{{item.answer}}}}, {{{{sample.output_text}}}})"
        )
    if namespace == "sample" and path[0] not in SAMPLE_FIELDS:
        raise TemplateError(
            f"{{{{{reference}}}}}: the sample has no field {path[0]!r} (it has {', '.join(SAMPLE_FIELDS)})"
        )
    return namespace, path


def references(template: str) -> list[tuple[str, tuple[str, ...]]]:
    """Every reference in ``template``, checked for syntax (the fields themselves are not looked up)."""
    return [split_reference(match) for match in _REFERENCE.findall(template)]


def lookup(value, namespace: str, path: tuple[str, ...]):
    """The value at ``path`` inside ``value`` (the item or the sample); a missing step is a TemplateError."""
    where = namespace
    for step in path:
        if isinstance(value, dict) and step in value:
            value = value[step]
        elif isinstance(value, list) and step.isdigit() and int(step) < len(value):
            value = value[int(step)]
        else:
            full = ".".join((namespace, *path))
            held = f"it has {len(value)} entries" if isinstance(value, list) else f"it is {_json_name(value)}"
            if isinstance(value, dict):
                held = f"it has {', '.join(map(repr, value)) or 'no fields'}"
            raise TemplateError(f"{{{{{full}}}}}: {where} has no field {step!r} ({held})", (namespace, *path))
        where = f"{where}.{step}"
    return value


def _json_name(value) -> str:
    return "null" if value is None else {str: "a string", bool: "a boolean"}.get(type(value), "a number")


def render(template: str, sample: dict, item: dict) -> str:
    """``template`` with every reference replaced by its value."""
    scopes = {"sample": sample, "item": item}

    def fill(match: re.Match) -> str:
        namespace, path = split_reference(match.group(1))
        value = lookup(scopes[namespace], namespace, path)
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)

    return _REFERENCE.sub(fill, template)
