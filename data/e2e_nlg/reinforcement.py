"""The E2E prompts as OpenAI reinforcement JSONL, for configs/e2e_grpo.yaml.

    python data/e2e_nlg/reinforcement.py

Each distinct prompt of train.jsonl, validation.jsonl and test.jsonl becomes one line of
rl_train.jsonl, rl_validation.jsonl and rl_test.jsonl (522, 25 and 630 lines), in order of first
appearance: ``{"messages": [the user prompt], "mr": <the meaning representation>}``, the ``mr``
being what the slot-coverage grader (examples/e2e_slot_coverage.py) checks the answer against.
"""

import json
from pathlib import Path

PREFIX = "Write one fluent sentence describing this restaurant: "


def convert(source: Path, target: Path) -> int:
    prompts = dict.fromkeys(json.loads(line)["prompt"] for line in source.read_text(encoding="utf-8").splitlines())
    lines = [
        json.dumps({"messages": [{"role": "user", "content": p}], "mr": p.removeprefix(PREFIX)}, ensure_ascii=False)
        for p in prompts
    ]
    target.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return len(lines)


def main() -> None:
    here = Path(__file__).parent
    for name in ("train", "validation", "test"):
        print(f"rl_{name}.jsonl: {convert(here / f'{name}.jsonl', here / f'rl_{name}.jsonl')} prompts")


if __name__ == "__main__":
    main()
