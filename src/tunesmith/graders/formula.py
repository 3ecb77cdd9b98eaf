"""``calculate_output`` of a multi grader: arithmetic over the sub-graders' rewards, parsed with
``ast`` and walked here, never handed to ``eval``.

Allowed: numbers, grader names, ``+ - * / ** ^`` (``^`` is a power, as in OpenAI's guide, not
xor), ``%``, unary minus and plus, parentheses, and calls of FUNCTIONS. Anything else (attribute
access, subscripts, other calls, comparisons, strings, lambdas) is refused when the grader is
parsed. A division by zero, a log of zero or an overflow makes the result 0 with a reported error.
"""

from __future__ import annotations

import ast
import math
import operator

from tunesmith.errors import TunesmithError

FUNCTIONS = {
    "min": min,
    "max": max,
    "abs": abs,
    "floor": math.floor,
    "ceil": math.ceil,
    "round": round,
    "sqrt": math.sqrt,
    "exp": math.exp,
    "log": math.log,
}
_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
    ast.Mod: operator.mod,
}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}
MAX_LENGTH = 2000


class FormulaError(TunesmithError, ValueError):
    """A formula that is not plain arithmetic over the graders' names."""


class FormulaValueError(TunesmithError):
    """A formula that parsed but has no value for these rewards (division by zero, log(0), overflow)."""


def _tree(text: str) -> ast.expr:
    if len(text) > MAX_LENGTH:
        raise FormulaError(f"calculate_output has {len(text)} characters, more than {MAX_LENGTH}")
    try:
        # ^ is a power with a power's precedence (2 * a ^ 2 is 2 * (a ** 2)), so it becomes ** before
        # parsing; no string can hold a ^, strings are refused.
        return ast.parse(text.strip().replace("^", "**"), mode="eval").body
    except SyntaxError as error:
        raise FormulaError(f"calculate_output {text!r} does not parse: {error.msg}") from None
    except (RecursionError, MemoryError):
        raise FormulaError(f"calculate_output {text!r} is nested too deeply") from None


def _refuse(node: ast.AST, text: str, why: str):
    piece = ast.get_source_segment(text.strip().replace("^", "**"), node) or type(node).__name__
    raise FormulaError(f"calculate_output {text!r}: {why}: {piece!r}")


def _walk(node: ast.expr, text: str, names: set[str], values: dict[str, float] | None):
    """Checks ``node`` (values None) or computes it."""
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return float(node.value)  # floats overflow to an error; ints would grow without bound (9**9**9)
    if isinstance(node, ast.Name):
        if node.id not in names:
            _refuse(node, text, f"unknown name (the graders are {', '.join(sorted(names))})")
        return values[node.id] if values is not None else 0.0
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _walk(node.left, text, names, values), _walk(node.right, text, names, values)
        return _BINARY[type(node.op)](left, right) if values is not None else 0.0
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_walk(node.operand, text, names, values))
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
            _refuse(node.func, text, f"only these functions may be called: {', '.join(FUNCTIONS)}")
        if node.keywords or not node.args or any(isinstance(a, ast.Starred) for a in node.args):
            _refuse(node, text, "a function takes plain arguments")
        args = [_walk(a, text, names, values) for a in node.args]
        return FUNCTIONS[node.func.id](*args) if values is not None else 0.0
    _refuse(node, text, "not arithmetic")


def check(text: str, names: set[str]) -> None:
    """FormulaError unless ``text`` is arithmetic over ``names``."""
    _walk(_tree(text), text, names, None)


def evaluate(text: str, values: dict[str, float]) -> float:
    """The formula's value for the sub-graders' ``values``; FormulaValueError when it has none."""
    try:
        result = float(_walk(_tree(text), text, set(values), values))
    except FormulaError:
        raise
    except ZeroDivisionError:
        raise FormulaValueError(f"calculate_output {text!r}: division by zero") from None
    except (ValueError, OverflowError, TypeError) as error:
        raise FormulaValueError(f"calculate_output {text!r}: {error}") from None
    if not math.isfinite(result):
        raise FormulaValueError(f"calculate_output {text!r}: the result is {result}")
    return result
