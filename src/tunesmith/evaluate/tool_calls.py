"""Tool-call scoring as the Berkeley Function Calling Leaderboard does it (its "AST" match).

A test item carries the tools offered and its acceptable answers in BFCL's ``possible_answer``
form: a list of calls, each ``{function_name: {argument: [acceptable values, ...]}}``; an empty
list means the right answer is to call nothing. A call made by the model matches an expected one when

* the function name is the same;
* every required parameter of the tool is present;
* every argument given is a parameter of the tool and of the expected call, its JSON type is the
  parameter's (an int is accepted for a float/number parameter, as BFCL accepts Python's implicit
  conversion; a bool is never an int), and its value is one of the acceptable ones: strings are
  compared after BFCL's normalisation (lower case; spaces and ``,./-_*^`` removed; ``'`` read as
  ``"``), lists element-wise with the same normalisation of string elements, dicts key by key;
* every expected argument left out has ``""`` among its acceptable values (it is optional).

An item is an exact match when its calls and the expected ones pair up one to one (a multiset:
the order of parallel calls does not matter) and, for a no-call item, when no call is made.

Both BFCL's type names (``dict``, ``float``, ``tuple``, ``any``) and JSON Schema's (``object``,
``number``, ``array``) are understood, so the OpenAI-form schemas of the shipped test files score
exactly as BFCL's originals.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tunesmith.evaluate import metrics

OPTIONAL = ""  # among an argument's acceptable values: the argument may be left out

# JSON Schema and BFCL type names -> the Python types json.loads produces for them.
_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "any": (str,),
    "integer": (int,),
    "float": (float,),
    "number": (float,),
    "boolean": (bool,),
    "array": (list,),
    "tuple": (list,),
    "dict": (dict,),
    "object": (dict,),
}
_FLOAT_TYPES = {"float", "number"}
_IGNORED = re.compile(r"[ ,./\-_*^]")


@dataclass(frozen=True)
class ParsedOutput:
    """A model's answer read back: the calls it made and whether every call it attempted was readable JSON."""

    calls: tuple[tuple[str, dict], ...]  # (function name, arguments)
    attempted: bool  # the output tried to call a tool (readable or not)
    valid_json: bool  # every attempted call parsed into a name and an arguments object


@dataclass(frozen=True)
class Verdict:
    exact: bool  # calls and arguments all acceptable (for a no-call item: no call made)
    names: bool  # the multiset of called function names is the expected one


def normalise(text: str) -> str:
    """BFCL's string normalisation: "April 1, 2024" and "april 1 2024" compare equal."""
    return _IGNORED.sub("", text).lower().replace("'", '"')


def _comparable(value):
    """A value with its strings normalised, at any depth, for membership tests."""
    if isinstance(value, str):
        return normalise(value)
    if isinstance(value, list):
        return [_comparable(v) for v in value]
    if isinstance(value, dict):
        return {k: _comparable(v) for k, v in value.items()}
    return value


def _same(value, acceptable) -> bool:
    """Equality after normalisation that keeps bool, int and float apart (Python's 1 == True does not)."""
    if isinstance(value, bool) or isinstance(acceptable, bool):
        return type(value) is type(acceptable) and value == acceptable
    if isinstance(value, list) and isinstance(acceptable, list):
        return len(value) == len(acceptable) and all(_same(v, a) for v, a in zip(value, acceptable, strict=True))
    if isinstance(value, dict) and isinstance(acceptable, dict):
        return _dict_matches(value, acceptable)
    return _comparable(value) == _comparable(acceptable)


def _dict_matches(value: dict, acceptable: dict) -> bool:
    """A dict argument against one acceptable dict whose entries are either values or lists of
    acceptable values (BFCL's form), the latter allowing ``""`` for an optional key."""
    for key, given in value.items():
        if key not in acceptable:
            return False
        options = acceptable[key] if isinstance(acceptable[key], list) else [acceptable[key]]
        if not any(_same(given, option) or _same(given, acceptable[key]) for option in options):
            return False
    return all(key in value or (isinstance(v, list) and OPTIONAL in v) for key, v in acceptable.items())


def _type_ok(value, schema: dict) -> bool:
    kind = schema.get("type")
    if kind is None or kind not in _TYPES:
        return True  # an untyped or unknown parameter type constrains nothing
    if kind in _FLOAT_TYPES and type(value) is int:
        return True
    if type(value) not in _TYPES[kind]:
        return False
    items = schema.get("items") if kind in ("array", "tuple") else None
    return not isinstance(items, dict) or all(_type_ok(v, items) for v in value)


def _argument_ok(value, acceptable: list, schema: dict) -> bool:
    if not _type_ok(value, schema):
        return False
    if schema.get("type") in _FLOAT_TYPES and type(value) is int:
        value = float(value)
    return any(option != OPTIONAL and _same(value, option) for option in acceptable)


def call_matches(name: str, arguments: dict, expected: dict, tools: dict[str, dict]) -> bool:
    """One call against one expected call ``{function_name: {argument: [acceptable, ...]}}``."""
    ((wanted, answers),) = expected.items()
    if name != wanted or not isinstance(arguments, dict):
        return False
    parameters = tools.get(name, {}).get("parameters") or {}
    properties = parameters.get("properties") or {}
    if any(required not in arguments for required in parameters.get("required") or []):
        return False
    for argument, value in arguments.items():
        if argument not in properties or argument not in answers:
            return False
        if not _argument_ok(value, answers[argument], properties[argument]):
            return False
    return all(argument in arguments or OPTIONAL in values for argument, values in answers.items())


def _perfect_matching(fits: list[list[bool]]) -> bool:
    """Whether every made call pairs with a distinct expected call (Kuhn's augmenting paths)."""
    owner: dict[int, int] = {}

    def assign(call: int, seen: set[int]) -> bool:
        for target, fit in enumerate(fits[call]):
            if fit and target not in seen:
                seen.add(target)
                if target not in owner or assign(owner[target], seen):
                    owner[target] = call
                    return True
        return False

    return all(assign(call, set()) for call in range(len(fits)))


def judge(output: ParsedOutput, possible_answer: Sequence[dict], tools: dict[str, dict]) -> Verdict:
    """The verdict on one item: ``tools`` maps a function name to its schema ``{name, parameters, ...}``."""
    made = output.calls
    names = Counter(name for name, _ in made) == Counter(next(iter(call)) for call in possible_answer)
    if output.attempted and not output.valid_json:
        return Verdict(exact=False, names=names)
    if len(made) != len(possible_answer):
        return Verdict(exact=False, names=names)
    fits = [[call_matches(name, args, expected, tools) for expected in possible_answer] for name, args in made]
    return Verdict(exact=_perfect_matching(fits), names=names)


def _ratio(hits: Sequence[bool], counted: Sequence[bool]) -> metrics.ItemStats:
    """A share among the counted items only; uncounted rows add nothing to either sum, so a
    bootstrap resample keeps the paired item structure of every metric."""
    rows = np.array([[float(h and c), float(c)] for h, c in zip(hits, counted, strict=True)]).reshape(-1, 2)
    return metrics.ItemStats(rows, lambda sums: 100.0 * sums[0] / sums[1] if sums[1] else math.nan)


def tool_call_stats(
    outputs: Sequence[ParsedOutput],
    answers: Sequence[Sequence[dict]],
    tools: Sequence[dict[str, dict]],
    categories: Sequence[str],
) -> dict[str, metrics.ItemStats]:
    """Per-item statistics of every tool-calling metric (percent), overall and per category:

    * exact_call: the item's calls are exactly acceptable (no-call items: no call made);
    * name: the called function names are the expected multiset;
    * arguments: among items that expect calls and got the names right, the share with acceptable
      arguments too (what the arguments add once the choice of function is right);
    * json_valid: among outputs that attempted a call, the share whose every call was readable;
    * no_call: among items whose right answer is no call, the share with none made;
    * exact_call[category]: exact_call within each category.
    """
    verdicts = [judge(o, a, t) for o, a, t in zip(outputs, answers, tools, strict=True)]
    everyone = [True] * len(verdicts)
    expects_calls = [bool(a) for a in answers]
    table = {
        "exact_call": _ratio([v.exact for v in verdicts], everyone),
        "name": _ratio([v.names for v in verdicts], everyone),
        "arguments": _ratio(
            [v.exact for v in verdicts], [v.names and e for v, e in zip(verdicts, expects_calls, strict=True)]
        ),
        "json_valid": _ratio([o.valid_json for o in outputs], [o.attempted for o in outputs]),
        "no_call": _ratio([not o.calls and not o.attempted for o in outputs], [not e for e in expects_calls]),
    }
    for category in sorted(set(categories)):
        table[f"exact_call[{category}]"] = _ratio([v.exact for v in verdicts], [c == category for c in categories])
    return table
