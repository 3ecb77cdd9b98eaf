"""What a GGUF round trip is measured by: logits and greedy generations, ours against the file's."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from tunesmith.data.formats import Message
from tunesmith.data.tokenize import encode_chat
from tunesmith.generation import generate

REPO = Path(__file__).resolve().parents[2]
E2E_TEST = [json.loads(line) for line in (REPO / "data/e2e_nlg/test.jsonl").read_text().splitlines()[:5]]
PROMPTS = [row["prompt"] for row in E2E_TEST]


def load_gguf(path: Path):
    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()


def logit_ids(tokenizer) -> torch.Tensor:
    """64 tokens of shipped data."""
    text = " ".join(PROMPTS)
    return torch.tensor([tokenizer(text, add_special_tokens=False).input_ids[:64]])


@torch.no_grad()
def max_logit_difference(model, reference, ids) -> float:
    return (model(input_ids=ids).logits - reference(input_ids=ids).logits).abs().max().item()


def greedy(model, tokenizer, max_new_tokens: int = 12) -> list[str]:
    prompts = [encode_chat(tokenizer, [Message("user", p)]) for p in PROMPTS]
    return generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=5, temperature=0.0).texts
