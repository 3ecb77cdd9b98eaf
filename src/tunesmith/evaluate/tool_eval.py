"""`eval.task: tool_calls`: each test item's tools and question, answered by the base model
zero-shot and few-shot and by the fine-tune, parsed back into calls and scored as BFCL does.

Test file (one JSON object a line; the shipped data/tool_calling/test.jsonl, SOURCE.md there):
``messages`` (the chat before the answer), ``tools`` (OpenAI's ``[{type: function, function:
{name, description, parameters}}]``), ``possible_answer`` (BFCL's form: a list of calls
``{name: {argument: [acceptable values]}}``, ``""`` marking an optional argument; ``[]`` when the
right answer is no call) and an optional ``category`` that the report breaks exact-call accuracy
down by.

Every variant sees the same rendering as training (tunesmith.chat: the model's template with
``tools=``, or the fallback format of tools in the system turn and ``<tool_call>`` lines). Few-shot
demonstrations are single-turn training examples (a question, then calls or a text answer) put
before the question as earlier turns, with their tools offered next to the item's own, so every
call shown is to a tool on offer. Generation is free, not constrained: what is measured is whether
the model itself calls the right function with the right arguments in readable JSON.
"""

from __future__ import annotations

import gc
import json
from dataclasses import dataclass
from pathlib import Path

from tunesmith.chat.messages import Message
from tunesmith.chat.render import read_rendering, render_prompt
from tunesmith.chat.tools import CALL_OPEN, Tool, parse_tool_calls
from tunesmith.config import Config
from tunesmith.data.formats import read_examples, read_tools
from tunesmith.errors import TunesmithError
from tunesmith.evaluate.baselines import FEW_SHOT_OFF, MAX_AUTO_SHOTS, FewShotSelector, context_budget
from tunesmith.evaluate.tool_calls import ParsedOutput, tool_call_stats
from tunesmith.models import load_model
from tunesmith.models.vocabulary import load_model_for
from tunesmith.precision import autocast, default_device

SIDE_BY_SIDE = 10


@dataclass(frozen=True)
class ToolItem:
    messages: tuple[Message, ...]  # the chat before the answer
    tools: tuple[Tool, ...]
    possible_answer: tuple[dict, ...]  # BFCL's form; empty: the right answer is no call
    category: str
    line: int


def _tools(row: dict, where: str) -> tuple[Tool, ...]:
    problems: list = []
    tools, _ = read_tools(row, problems)
    errors = [p for p in problems if len(p) == 2]
    if errors:
        field, reason = errors[0]
        raise TunesmithError(f"{where}: field '{field}': {reason}")
    return tools


def _messages(raw, where: str) -> tuple[Message, ...]:
    """The question turns of a test item (role and text: the answer is in possible_answer)."""
    if not isinstance(raw, list) or not raw:
        raise TunesmithError(f"{where}: field 'messages' must be a non-empty list of chat messages")
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise TunesmithError(f"{where}: field 'messages[{i}]' needs a role and a content string")
    return tuple(Message(m["role"], m["content"]) for m in raw)


def _possible_answer(raw, tools: tuple[Tool, ...], where: str) -> tuple[dict, ...]:
    names = {tool.name for tool in tools}
    if not isinstance(raw, list):
        raise TunesmithError(f"{where}: field 'possible_answer' must be a list of calls ([] for no call)")
    for i, call in enumerate(raw):
        if not (isinstance(call, dict) and len(call) == 1 and isinstance(next(iter(call.values())), dict)):
            raise TunesmithError(f"{where}: field 'possible_answer[{i}]' is not {{function_name: {{argument: [...]}}}}")
        ((name, arguments),) = call.items()
        if name not in names:
            raise TunesmithError(f"{where}: field 'possible_answer[{i}]' calls {name!r}, which is not among the tools")
        bad = [arg for arg, values in arguments.items() if not isinstance(values, list)]
        if bad:
            raise TunesmithError(
                f"{where}: field 'possible_answer[{i}].{name}.{bad[0]}' must be a list of acceptable values"
            )
    return tuple(raw)


def load_tool_items(path: str, max_items: int | None = None) -> list[ToolItem]:
    """Test items in file order; bad lines name file, line and field."""
    file = Path(path)
    if not file.is_file():
        raise TunesmithError(f"test file not found: {path}")
    items = []
    for number, text in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        if not text.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TunesmithError(f"{where}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict) or "possible_answer" not in row:
            raise TunesmithError(
                f"{where}: field 'possible_answer' is missing: eval.task=tool_calls reads test items with "
                "messages, tools and possible_answer (see data/tool_calling/SOURCE.md)"
            )
        tools = _tools(row, where)
        items.append(
            ToolItem(
                _messages(row.get("messages"), where),
                tools,
                _possible_answer(row["possible_answer"], tools, where),
                str(row.get("category", "all")),
                number,
            )
        )
    if not items:
        raise TunesmithError(f"{path}: no test items")
    return items[:max_items]


def read_output(text: str) -> ParsedOutput:
    """A generation read back: a `<tool_call>` block the parser could not read stays in the
    content, and marks the output as an attempted call with invalid JSON."""
    content, calls = parse_tool_calls(text)
    unreadable = CALL_OPEN in content
    return ParsedOutput(tuple((c.name, c.arguments) for c in calls), bool(calls) or unreadable, not unreadable)


def _demonstrations(config: Config) -> tuple[list[tuple[Message, ...]], dict[int, tuple[Tool, ...]]]:
    """Single-turn training examples (user question, then the assistant's calls or answer) and
    their tools by position; longer conversations are no demonstration of one answer."""
    demos, tools = [], {}
    if not config.data.train:
        return demos, tools
    for example in read_examples(config.data.train, config.data.format, config.data.columns).examples:
        turns = tuple(m for m in example.messages if m.role != "system")
        if len(turns) == 2 and (turns[0].role, turns[1].role) == ("user", "assistant"):
            tools[len(demos)] = example.tools
            demos.append(turns)
    return demos, tools


def _with_system(messages: tuple[Message, ...], system: str | None) -> tuple[Message, ...]:
    if system is None or (messages and messages[0].role == "system"):
        return messages
    return (Message("system", system), *messages)


def _encode(tokenizer, messages, tools, mode) -> list[int]:
    # The template already wrote any BOS it wants; tokenising again must not add another.
    return tokenizer(render_prompt(tokenizer, messages, tools, mode=mode), add_special_tokens=False).input_ids


def _few_shot_ids(tokenizer, item: ToolItem, shots: list, system: str | None, budget: int, mode) -> tuple[list, int]:
    """The item after as many of the ranked demonstrations as fit the budget, all their tools offered."""
    count = len(shots)
    while True:
        chosen = shots[:count]
        offered = {tool.name: tool for tool in item.tools}
        for _, demo_tools in chosen:
            for tool in demo_tools:
                offered.setdefault(tool.name, tool)
        # Reversed so that the best-ranked demonstration sits right before the question.
        turns = [m for demo, _ in reversed(chosen) for m in demo]
        ids = _encode(tokenizer, _with_system((*turns, *item.messages), system), tuple(offered.values()), mode)
        if len(ids) <= budget or count == 0:
            return ids, count
        count -= 1


def _scorer(items: list[ToolItem]):
    answers = [item.possible_answer for item in items]
    tools = [{tool.name: tool.function() for tool in item.tools} for item in items]
    categories = [item.category for item in items]

    def score(model, tokenizer, prompts, _items, settings) -> dict:
        from tunesmith.evaluate.variants import generate_answers

        out = generate_answers(model, tokenizer, prompts, settings, settings.max_new_tokens)
        parsed = [read_output(text) for text in out.texts]
        return {"metrics": tool_call_stats(parsed, answers, tools, categories), "outputs": out.texts, "generation": out}

    return score


def _base_variants(config: Config, items: list[ToolItem], result: dict, score) -> None:
    from tunesmith.evaluate.variants import evaluate_variant, prepare_model

    settings = config.eval
    loaded = load_model_for(config)
    model, tokenizer = prepare_model(loaded), loaded.tokenizer
    zero = [_encode(tokenizer, _with_system(item.messages, config.data.system), item.tools, None) for item in items]
    result["variants"]["zero_shot"] = evaluate_variant(model, tokenizer, zero, items, settings, score)

    demos, demo_tools = _demonstrations(config)
    if settings.few_shot_k == 0:
        result["notes"].append(FEW_SHOT_OFF)
    elif demos:
        selector = FewShotSelector(demos, tokenizer, settings.few_shot_selection, settings.seed)
        index = {id(demo): i for i, demo in enumerate(demos)}
        budget = context_budget(model, settings.max_new_tokens, settings.context_tokens)
        wanted = MAX_AUTO_SHOTS if settings.few_shot_k is None else settings.few_shot_k
        built = []
        for i, item in enumerate(items):
            ranked = [(demo, demo_tools[index[id(demo)]]) for demo in selector.ranked(item.messages, i, wanted)]
            built.append(_few_shot_ids(tokenizer, item, ranked, config.data.system, budget, None))
        few = evaluate_variant(model, tokenizer, [ids for ids, _ in built], items, settings, score)
        few["shots"] = sum(count for _, count in built) / len(built)
        result["variants"]["few_shot"] = few
        result["few_shot"] = {"requested": settings.few_shot_k, "mean_shots": few["shots"], "budget": budget}
    else:
        result["notes"].append("few-shot skipped: data.train has no single-turn examples to show")
    del model, loaded
    gc.collect()


def evaluate_tool_calls(config: Config, run_dir: Path | None, out_dir: str) -> dict:
    """Every variant on data.test's tool-calling items; writes eval.json, report.html, report.md."""
    from tunesmith.evaluate.variants import (
        empty_result,
        evaluate_variant,
        gains,
        model_folder,
        prepare_model,
        read_loss_curve,
        read_training_summary,
        write_result,
    )

    settings = config.eval
    if not config.data.test:
        raise TunesmithError("data.test is not set: `tunesmith eval` needs a held-out test file")
    items = load_tool_items(config.data.test, settings.max_items)
    score = _scorer(items)
    calls = sum(len(item.possible_answer) for item in items)
    result = empty_result(config, "tool_calls", run_dir, len(items), calls)
    with autocast(config.train.dtype, default_device()):
        _base_variants(config, items, result, score)
    if run_dir is None:
        result["notes"].append(f"no fine-tuned model in {config.out_dir}: base variants only")
    else:
        folder = model_folder(run_dir)
        loaded = load_model(folder)
        model, tokenizer = prepare_model(loaded), loaded.tokenizer
        mode = (read_rendering(Path(folder)) or read_rendering(run_dir) or {}).get("tools")
        prompts = [
            _encode(tokenizer, _with_system(item.messages, config.data.system), item.tools, mode) for item in items
        ]
        with autocast(config.train.dtype, default_device()):
            result["variants"]["finetuned"] = evaluate_variant(model, tokenizer, prompts, items, settings, score)
        result["training"] = read_training_summary(run_dir)
        result["loss_curve"] = read_loss_curve(run_dir)
    result["samples"] = [
        {
            "input": "\n".join(m.content for m in item.messages if m.role == "user"),
            "references": [json.dumps(list(item.possible_answer))],
            **{name: v["outputs"][i] for name, v in result["variants"].items()},
        }
        for i, item in enumerate(items[:SIDE_BY_SIDE])
    ]
    result["gain"] = gains(result["variants"], settings)
    return write_result(result, out_dir)
