"""Constrained decoding: at each step, only the tokens a grammar allows keep their logits.

Grammars come from a JSON Schema (``response_format: {type: json_schema}``) or from tools: one
call of a named function, or of any one of the tools (``tool_choice: required``), written as the
fallback format's ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` line with the
arguments held to the tool's JSON Schema, so they always parse and validate. After the grammar is
complete only the end-of-turn token is allowed. One call per constrained answer: a named function
is called once, and ``required`` asks for at least one call.

The library is xgrammar: ~0.25 ms per token on CPU against llguidance's ~20 ms with SmolLM2's
49,152-token vocabulary (benchmarks/results/constrained_decoding.md).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from functools import lru_cache

import torch

from tunesmith.chat.schemas import as_json_schema
from tunesmith.chat.tools import CALL_CLOSE, CALL_OPEN, Tool
from tunesmith.errors import TunesmithError


def call_schema(tool: Tool) -> dict:
    """The JSON of one call of ``tool``: its name, and arguments valid under its parameters."""
    return {
        "type": "object",
        "properties": {
            "name": {"const": tool.name},
            "arguments": as_json_schema(tool.parameters) if tool.parameters else {"type": "object"},
        },
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def _json_grammar(schema: dict):
    import xgrammar as xgr

    # No free whitespace: a weak model could otherwise spend its whole budget on spaces.
    return xgr.Grammar.from_json_schema(json.dumps(schema), any_whitespace=False, strict_mode=True)


def json_schema_grammar(schema: dict):
    """Output that is one JSON value valid under ``schema``."""
    return _json_grammar(as_json_schema(schema))


def tool_call_grammar(tools: Sequence[Tool], name: str | None = None):
    """One ``<tool_call>`` line: a call of the tool called ``name``, or of any one of ``tools``."""
    import xgrammar as xgr

    chosen = [tool for tool in tools if name is None or tool.name == name]
    if not chosen:
        known = ", ".join(tool.name for tool in tools) or "none"
        raise TunesmithError(f"tool_choice names function {name!r}, which is not among the tools ({known})")
    schemas = [call_schema(tool) for tool in chosen]
    call = _json_grammar(schemas[0] if len(schemas) == 1 else {"anyOf": schemas})
    return xgr.Grammar.concat(
        xgr.Grammar.from_ebnf(f"root ::= {json.dumps(CALL_OPEN)}"),
        call,
        xgr.Grammar.from_ebnf(f"root ::= {json.dumps(CALL_CLOSE)}"),
    )


def tool_choice_grammar(tools: Sequence[Tool], tool_choice):
    """The grammar OpenAI's ``tool_choice`` asks for: None (free text) for "auto" and "none", one
    call of any tool for "required", one call of the named function for ``{"type": "function",
    "function": {"name": ...}}`` or, on the command line, its bare name."""
    if tool_choice in (None, "auto", "none"):
        return None
    if tool_choice == "required":
        return tool_call_grammar(tools)
    if isinstance(tool_choice, dict):
        name = (tool_choice.get("function") or {}).get("name")
        if tool_choice.get("type") != "function" or not isinstance(name, str):
            raise TunesmithError(
                'tool_choice must be "none", "auto", "required" or {"type": "function", "function": {"name": ...}}'
            )
        return tool_call_grammar(tools, name)
    return tool_call_grammar(tools, str(tool_choice))


@lru_cache(maxsize=4)
def _compiler(tokenizer, vocab_size: int):
    import xgrammar as xgr

    info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=[tokenizer.eos_token_id])
    return xgr.GrammarCompiler(info)


def compile_grammar(tokenizer, vocab_size: int, grammar):
    """A grammar compiled for a tokenizer whose logits rows are ``vocab_size`` wide (the model's
    output layer, which may be padded past the tokenizer's vocabulary)."""
    return _compiler(tokenizer, vocab_size).compile_grammar(grammar)


def constrain(
    pick: Callable[[torch.Tensor], torch.Tensor], grammars: Sequence, eos_id: int
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``pick`` (logits [rows, vocab] -> tokens [rows]) with row i held to compiled grammar i
    (None: free). Each call is one decoding step: the chosen tokens advance the grammars."""
    import xgrammar as xgr

    matchers = [xgr.GrammarMatcher(g) if g is not None else None for g in grammars]
    bitmask = None

    def step(logits: torch.Tensor) -> torch.Tensor:
        nonlocal bitmask
        if bitmask is None:
            bitmask = xgr.allocate_token_bitmask(len(matchers), logits.shape[-1])
        masked, finished = [], []
        for row, matcher in enumerate(matchers):
            if matcher is None:
                continue
            if matcher.is_terminated():
                finished.append(row)
            else:
                matcher.fill_next_token_bitmask(bitmask, row)
                masked.append(row)
        if masked:
            # xgrammar masks on the CPU; a CUDA logits row is masked there through a copy of the bitmask.
            xgr.apply_token_bitmask_inplace(logits, bitmask.to(logits.device), indices=masked)
        if finished:  # a complete answer may only end; this row's later tokens are discarded anyway
            logits[finished] = float("-inf")
            logits[finished, eos_id] = 0.0
        tokens = pick(logits)
        for row in masked:
            matchers[row].accept_token(int(tokens[row]))
        return tokens

    return step
