"""Rebuild train.jsonl and test.jsonl from Anthropic's hh-rlhf harmless-base test split.

    python data/hh_rlhf_harmless/convert.py /path/to/harmless-base/test.jsonl.gz

Each source line holds two whole conversations ("\\n\\nHuman: ...\\n\\nAssistant: ...") that differ
in their last assistant turn. The shared turns become the prompt, the two last turns the preferred
and the non-preferred answer. Pairs whose conversations differ before the last turn, or whose two
answers are identical or empty, are dropped. A seeded shuffle puts 300 pairs in test.jsonl, the
rest in train.jsonl; train is written in OpenAI's DPO format, test in the {prompt, chosen,
rejected} form, so both readers are exercised.
"""

import gzip
import json
import random
import re
import sys
from pathlib import Path

TURN = re.compile(r"\n\n(Human|Assistant): ")
ROLES = {"Human": "user", "Assistant": "assistant"}
TEST_PAIRS = 300


def turns(text: str) -> list[dict]:
    parts = TURN.split(text)
    return [{"role": ROLES[r], "content": c.strip()} for r, c in zip(parts[1::2], parts[2::2], strict=True)]


def pair(line: str) -> tuple[list[dict], str, str] | None:
    record = json.loads(line)
    chosen, rejected = turns(record["chosen"]), turns(record["rejected"])
    if not chosen or not rejected or chosen[:-1] != rejected[:-1] or len(chosen) < 2:
        return None
    last_c, last_r = chosen[-1], rejected[-1]
    if last_c["role"] != "assistant" or last_r["role"] != "assistant":
        return None
    prompt = chosen[:-1]
    if any(not m["content"] for m in prompt) or not last_c["content"] or not last_r["content"]:
        return None
    if last_c["content"] == last_r["content"] or prompt[-1]["role"] != "user":
        return None
    return prompt, last_c["content"], last_r["content"]


def main(source: str) -> None:
    with gzip.open(source, "rt", encoding="utf-8") as fh:
        pairs = [p for p in map(pair, fh) if p is not None]
    random.Random(0).shuffle(pairs)
    here = Path(__file__).parent
    test, train = pairs[:TEST_PAIRS], pairs[TEST_PAIRS:]
    with open(here / "train.jsonl", "w", encoding="utf-8") as out:
        for prompt, chosen, rejected in train:
            row = {
                "input": {"messages": prompt},
                "preferred_output": [{"role": "assistant", "content": chosen}],
                "non_preferred_output": [{"role": "assistant", "content": rejected}],
            }
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    with open(here / "test.jsonl", "w", encoding="utf-8") as out:
        for prompt, chosen, rejected in test:
            out.write(json.dumps({"prompt": prompt, "chosen": chosen, "rejected": rejected}, ensure_ascii=False) + "\n")
    print(f"{len(train)} train, {len(test)} test pairs")


if __name__ == "__main__":
    main(sys.argv[1])
