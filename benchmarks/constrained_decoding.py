"""Per-token cost on CPU of the two grammar libraries for JSON-schema-constrained decoding.

    PYTHONPATH=src python benchmarks/constrained_decoding.py [ITEMS]

For the first ITEMS (default 40) calls of data/tool_calling/train.jsonl, the schema "a call of
function F" ({"name": F, "arguments": <F's parameters>}) is compiled with SmolLM2's tokenizer
(vocabulary 49,152), then the known call is fed token by token: at each step the library fills
the allowed-token bitmask, the mask is applied to a [1, vocab] logits row, and the token is
accepted. Reported per library: compile time per schema and time per token (mask + apply +
accept), median and 95th percentile, next to SmolLM2-135M's own decode step on the same CPU.
"""

import json
import statistics
import sys
import time
from pathlib import Path

import torch


def call_schema(name: str, parameters: dict) -> dict:
    return {
        "type": "object",
        "properties": {"name": {"const": name}, "arguments": parameters or {"type": "object"}},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def cases(limit: int) -> list[tuple[dict, str]]:
    out = []
    for line in Path("data/tool_calling/train.jsonl").read_text().splitlines():
        row = json.loads(line)
        tools = {t["function"]["name"]: t["function"].get("parameters") for t in row.get("tools", [])}
        for message in row["messages"]:
            for call in message.get("tool_calls") or []:
                f = call["function"]
                text = json.dumps({"name": f["name"], "arguments": json.loads(f["arguments"])}, ensure_ascii=False)
                out.append((call_schema(f["name"], tools[f["name"]]), text))
        if len(out) >= limit:
            return out[:limit]
    return out


def run_xgrammar(tokenizer, items):
    import xgrammar as xgr

    info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=len(tokenizer))
    compiler = xgr.GrammarCompiler(info, cache_enabled=False)
    compile_s, step_s = [], []
    for schema, text in items:
        start = time.perf_counter()
        matcher = xgr.GrammarMatcher(compiler.compile_json_schema(json.dumps(schema), strict_mode=True))
        compile_s.append(time.perf_counter() - start)
        mask = xgr.allocate_token_bitmask(1, info.vocab_size)
        logits = torch.randn(1, info.vocab_size)
        for token in tokenizer(text, add_special_tokens=False).input_ids:
            start = time.perf_counter()
            matcher.fill_next_token_bitmask(mask)
            xgr.apply_token_bitmask_inplace(logits, mask)
            ok = matcher.accept_token(token)
            step_s.append(time.perf_counter() - start)
            assert ok, f"xgrammar refused a token of {text}"
    return compile_s, step_s


def run_llguidance(tokenizer, items):
    import llguidance
    import llguidance.hf
    import llguidance.torch

    lltok = llguidance.hf.from_tokenizer(tokenizer)
    compile_s, step_s = [], []
    for schema, text in items:
        start = time.perf_counter()
        matcher = llguidance.LLMatcher(lltok, llguidance.LLMatcher.grammar_from_json_schema(schema))
        compile_s.append(time.perf_counter() - start)
        mask = llguidance.torch.allocate_token_bitmask(1, lltok.vocab_size)
        logits = torch.randn(1, lltok.vocab_size)
        for token in tokenizer(text, add_special_tokens=False).input_ids:
            start = time.perf_counter()
            llguidance.torch.fill_next_token_bitmask(matcher, mask, 0)
            llguidance.torch.apply_token_bitmask_inplace(logits, mask)
            ok = matcher.consume_token(token)
            step_s.append(time.perf_counter() - start)
            assert ok, f"llguidance refused a token of {text}: {matcher.get_error()}"
    return compile_s, step_s


def decode_step_ms(tokens: int = 32) -> float:
    from tunesmith.generation import decode
    from tunesmith.models import load_model

    loaded = load_model("smollm2-135m-instruct")
    loaded.model.eval()
    prompt = loaded.tokenizer("Weather in Paris for three days, please.", add_special_tokens=False).input_ids
    steps = decode(loaded.model, [prompt], loaded.tokenizer.pad_token_id, tokens, lambda logits: logits.argmax(-1))
    next(steps)  # the prompt's forward
    start = time.perf_counter()
    count = sum(1 for _ in steps)
    return 1000 * (time.perf_counter() - start) / count


def summary(values: list[float]) -> str:
    ms = sorted(1000 * v for v in values)
    return f"median {statistics.median(ms):.3f} ms, p95 {ms[int(0.95 * (len(ms) - 1))]:.3f} ms"


def main() -> None:
    from tunesmith.models import load_tokenizer

    torch.set_num_threads(2)
    tokenizer = load_tokenizer("smollm2-135m-instruct")
    items = cases(int(sys.argv[1]) if len(sys.argv) > 1 else 40)
    tokens = sum(len(tokenizer(t, add_special_tokens=False).input_ids) for _, t in items)
    print(f"{len(items)} schemas, {tokens} tokens, vocabulary {len(tokenizer)}")
    for name, run in (("xgrammar", run_xgrammar), ("llguidance", run_llguidance)):
        compile_s, step_s = run(tokenizer, items)
        print(f"{name:10s} compile: {summary(compile_s)}; per token: {summary(step_s)}")
    print(f"SmolLM2-135M decode step (1 row, greedy): {decode_step_ms():.1f} ms")


if __name__ == "__main__":
    main()
