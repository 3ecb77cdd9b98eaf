"""What GGUF export costs in fidelity: a run's merged model against its GGUF files read back by
transformers' GGUF loader (no llama.cpp here to compare with; the reader is the one tunesmith uses
for .gguf models).

    python benchmarks/gguf_roundtrip.py RUN_DIR [--prompts 20] [--max-new-tokens 32]
    python benchmarks/gguf_roundtrip.py runs/gemma3_trec_chatml --data data/trec/test.jsonl --outtypes f16

Per --outtype: file size, write time, the largest logit difference on 64 tokens of held-out
prompts (E2E's test file unless --data names another prompt/completion file), and how many greedy
answers to the first N of them are identical to the merged model's.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from machine import cpu_flags
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunesmith.data.formats import Message
from tunesmith.data.tokenize import encode_chat
from tunesmith.export import export_run
from tunesmith.export.gguf import OUTTYPES
from tunesmith.generation import generate

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--data", type=Path, default=REPO / "data/e2e_nlg/test.jsonl", help="prompt/completion JSONL")
    parser.add_argument("--outtypes", nargs="+", default=list(OUTTYPES), choices=list(OUTTYPES))
    args = parser.parse_args()
    run = Path(args.run_dir)
    rows = [json.loads(line) for line in args.data.read_text().splitlines()]
    prompts = [r["prompt"] for r in rows[: args.prompts]]

    tokenizer = AutoTokenizer.from_pretrained(run / "merged")
    ids = torch.tensor([tokenizer(" ".join(prompts), add_special_tokens=False).input_ids[:64]])
    chats = [encode_chat(tokenizer, [Message("user", p)]) for p in prompts]

    def measure(model) -> tuple[torch.Tensor, list[str]]:
        with torch.no_grad():
            logits = model(input_ids=ids).logits
        texts = generate(model, tokenizer, chats, max_new_tokens=args.max_new_tokens, batch_size=8).texts
        return logits, texts

    reference_logits, reference_texts = measure(AutoModelForCausalLM.from_pretrained(run / "merged").eval())
    merged_mb = sum(f.stat().st_size for f in (run / "merged").glob("*.safetensors")) / 1e6
    print(f"run {run}: merged safetensors {merged_mb:.0f} MB; CPU flags {cpu_flags()}; compute float32")
    print("| outtype | size (MB) | write (s) | load (s) | max abs logit diff (64 tokens) | same greedy answers |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for outtype in args.outtypes:
            start = time.perf_counter()
            path = export_run(run, "gguf", outtype, Path(folder) / f"model-{outtype}.gguf")
            seconds = time.perf_counter() - start
            start = time.perf_counter()
            model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=path.name, dtype=torch.float32).eval()
            load = time.perf_counter() - start
            logits, texts = measure(model)
            diff = (logits - reference_logits).abs().max().item()
            same = sum(a == b for a, b in zip(texts, reference_texts, strict=True))
            size = path.stat().st_size / 1e6
            cells = f"| {outtype} | {size:.0f} | {seconds:.1f} | {load:.0f} | {diff:.2g} | {same}/{len(texts)} |"
            print(cells, flush=True)
            path.unlink()


if __name__ == "__main__":
    main()
