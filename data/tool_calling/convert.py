"""Rebuild the shipped tool-calling files from BFCL v4 and Glaive (see SOURCE.md).

    python data/tool_calling/convert.py ../shared/data/tool_calling

BFCL's simple_python, multiple, parallel, parallel_multiple and irrelevance items are split per
category with a fixed seed into train / validation / test. Training and validation lines are
OpenAI chat examples (`messages` + `tools`; the assistant turn's `tool_calls` carry the first
acceptable value of every argument, optional ones left out when BFCL lists "" first; an
irrelevance item's answer is a text reply with no call). Test lines keep every acceptable value
in BFCL's possible_answer form, the format `eval.task: tool_calls` reads:

    {"id": "parallel_0", "category": "parallel", "messages": [{"role": "user", ...}],
     "tools": [{"type": "function", "function": {...}}],
     "possible_answer": [{"spotify_play": {"artist": ["Taylor Swift"], "duration": [20]}}, ...]}

(`possible_answer: []`: the right answer is no call). Schemas are rewritten in JSON Schema's
type names (BFCL's dict -> object, float -> number, tuple -> array; its "any" loses its type) and
function names' dots become underscores, as BFCL does for OpenAI's API, whose names allow no dots.
Glaive's ShareGPT conversations become OpenAI examples too and are appended to train.jsonl.
"""

import json
import random
import sys
from pathlib import Path

import jsonschema

from tunesmith.chat.schemas import as_json_schema  # BFCL type names -> JSON Schema's, as tools are read

CATEGORIES = ("simple_python", "multiple", "parallel", "parallel_multiple", "irrelevance")
SEED = 0
TEST_SHARE, VALIDATION_SHARE = 0.25, 0.05
NO_CALL_REPLY = "None of the tools I have can do this, so I cannot call one for it."


def openai_name(name: str) -> str:
    return name.replace(".", "_")


def tool(function: dict) -> dict:
    return {
        "type": "function",
        "function": {
            "name": openai_name(function["name"]),
            "description": function.get("description", ""),
            "parameters": as_json_schema(function["parameters"]),
        },
    }


def one_answer(possible: list[dict]) -> list[dict]:
    """OpenAI tool_calls with the first acceptable value of each argument."""
    calls = []
    for i, call in enumerate(possible):
        ((name, arguments),) = call.items()
        chosen = {arg: values[0] for arg, values in arguments.items() if values and values[0] != ""}
        calls.append(
            {
                "id": f"call_{i}",
                "type": "function",
                "function": {"name": openai_name(name), "arguments": json.dumps(chosen)},
            }
        )
    return calls


def bfcl_items(source: Path, category: str) -> list[dict]:
    answers = {}
    if category != "irrelevance":
        for line in (source / "bfcl/possible_answer" / f"BFCL_v4_{category}.json").read_text().splitlines():
            row = json.loads(line)
            answers[row["id"]] = [{openai_name(k): v for k, v in call.items()} for call in row["ground_truth"]]
    items = []
    for line in (source / "bfcl" / f"BFCL_v4_{category}.json").read_text().splitlines():
        row = json.loads(line)
        items.append(
            {
                "id": row["id"],
                "category": category,
                "messages": row["question"][0],
                "tools": [tool(f) for f in row["function"]],
                "possible_answer": answers.get(row["id"], []),
            }
        )
    return items


def fits_schemas(calls: list[dict], tools: list[dict]) -> bool:
    schemas = {t["function"]["name"]: t["function"].get("parameters") or {} for t in tools}
    for call in calls:
        try:
            jsonschema.validate(json.loads(call["function"]["arguments"]), schemas[call["function"]["name"]])
        except (KeyError, jsonschema.ValidationError):
            return False
    return True


def training_example(item: dict) -> dict | None:
    """None for the few BFCL items whose first acceptable value contradicts the tool's own schema
    (e.g. a list for a string): a training file must validate."""
    if item["possible_answer"]:
        calls = one_answer(item["possible_answer"])
        if not fits_schemas(calls, item["tools"]):
            return None
        answer = {"role": "assistant", "tool_calls": calls}
    else:
        answer = {"role": "assistant", "content": NO_CALL_REPLY}
    return {"messages": [*item["messages"], answer], "tools": item["tools"]}


def glaive_example(row: dict) -> dict | None:
    """A ShareGPT conversation as an OpenAI example; None when a call does not fit its tool's schema."""
    functions = json.loads(row["tools"]) if row["tools"] else []
    tools = [{"type": "function", "function": f} for f in functions]
    messages, pending = [], None
    for turn in row["conversations"]:
        role, value = turn["from"], turn["value"]
        if role == "function_call":
            call = json.loads(value)
            arguments = call.get("arguments", {})
            arguments = json.loads(arguments) if isinstance(arguments, str) else arguments
            pending = f"call_{len(messages)}"
            function = {"name": call["name"], "arguments": json.dumps(arguments, ensure_ascii=False)}
            calls = [{"id": pending, "type": "function", "function": function}]
            if not fits_schemas(calls, tools):
                return None
            messages.append({"role": "assistant", "tool_calls": calls})
        elif role == "observation":
            messages.append({"role": "tool", "tool_call_id": pending, "content": value})
        else:
            messages.append({"role": {"human": "user", "gpt": "assistant"}[role], "content": value})
    return {"messages": messages, "tools": tools} if tools else {"messages": messages}


def write(path: Path, rows) -> int:
    rows = [r for r in rows if r is not None]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return len(rows)


def main(source: Path) -> None:
    here = Path(__file__).parent
    train, validation, test = [], [], []
    for category in CATEGORIES:
        items = bfcl_items(source, category)
        random.Random(f"{SEED}/{category}").shuffle(items)
        n_test, n_val = round(len(items) * TEST_SHARE), round(len(items) * VALIDATION_SHARE)
        test += items[:n_test]
        validation += items[n_test : n_test + n_val]
        train += items[n_test + n_val :]
    glaive = [glaive_example(row) for row in json.loads((source / "glaive_toolcall_en_demo.json").read_text())]
    kept = [g for g in glaive if g is not None]
    bfcl_train = [training_example(i) for i in train]
    # Shuffled across categories so `eval.max_items: N` evaluates a mix, not the first category only.
    random.Random(SEED).shuffle(test)
    counts = {
        "train.jsonl": write(here / "train.jsonl", bfcl_train + kept),
        "validation.jsonl": write(here / "validation.jsonl", [training_example(i) for i in validation]),
        "test.jsonl": write(here / "test.jsonl", test),
    }
    dropped = bfcl_train.count(None) + glaive.count(None)
    print(counts, f"({len(kept)} Glaive conversations; {dropped} examples dropped: a call outside its tool's schema)")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
