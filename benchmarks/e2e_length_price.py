"""The price of length in configs/e2e_grpo.yaml's grader (``slots - price * length``), chosen on the
validation inputs before any GRPO run.

GRPO learns only from how a grader orders the answers within each prompt's group (an answer's
advantage is its reward against its group's mean). So the price is chosen for the grader whose
ordering of sampled answers agrees best with the E2E references: the SFT model samples a group per
validation input as a rollout does (rl.group_size x 2 answers, rl.temperature), and for each price
on the grid the mean over inputs of Kendall's tau between the grader's reward and the answer's
sentence BLEU against that input's human references (data/e2e_nlg/validation.jsonl) is reported;
the price with the highest agreement is chosen. BLEU is the judge here, and is then reported on the
test set once, after training.

    python benchmarks/e2e_length_price.py --config configs/e2e_grpo.yaml \
        --references data/e2e_nlg/validation.jsonl --out benchmarks/results/e2e_length_price.md
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import statistics
import sys
from collections import defaultdict
from pathlib import Path

PRICES = (0.0, 0.125, 0.25, 0.5, 1.0, 2.0)


def _module(path: str):
    spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def references(path: str, prefix: str) -> dict[str, list[str]]:
    """The human references of each meaning representation in a prompt/completion file."""
    found = defaultdict(list)
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        found[row["prompt"].removeprefix(prefix)].append(row["completion"])
    return found


def agreement(groups: list[dict], price: float) -> float:
    """Mean tau-b over the groups; a group constant on either side (NaN) teaches GRPO nothing and is skipped."""
    from scipy.stats import kendalltau  # scikit-learn's dependency

    taus = []
    for group in groups:
        rewards = [c - price * e for c, e in zip(group["coverage"], group["excess"], strict=True)]
        tau = kendalltau(rewards, group["bleu"]).statistic
        if not math.isnan(tau):
            taus.append(tau)
    return statistics.mean(taus)


def sample_groups(config_path: str, refs: dict[str, list[str]], slots, length) -> list[dict]:
    import sacrebleu

    from tunesmith.config import load_config
    from tunesmith.evaluate.variants import model_folder
    from tunesmith.graders import Context
    from tunesmith.graders.load import load_grader
    from tunesmith.models import load_model
    from tunesmith.train.rollout import prepare_graded, roll_out

    cfg = load_config(config_path)
    loaded = load_model(model_folder(Path(cfg.model)))
    grader = load_grader(cfg.rl.grader)
    prompts = prepare_graded(cfg, grader, loaded.tokenizer).validation
    size = cfg.rl.group_size * 2  # larger groups than training's: more pairs to compare per input
    rollout = roll_out(loaded.model, loaded.tokenizer, prompts, grader, Context(), cfg, size)
    groups = []
    for k, prompt in enumerate(prompts):
        mr = prompt.item["mr"]
        texts = [
            loaded.tokenizer.decode(a, skip_special_tokens=True) for a in rollout.answers[k * size : (k + 1) * size]
        ]
        groups.append(
            {
                "mr": mr,
                "texts": texts,
                "coverage": [slots.coverage(mr, t) for t in texts],
                "excess": [length.excess(mr, t) for t in texts],
                "bleu": [sacrebleu.sentence_bleu(t, refs[mr]).score for t in texts],
            }
        )
    return groups


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/e2e_grpo.yaml")
    parser.add_argument("--references", default="data/e2e_nlg/validation.jsonl")
    parser.add_argument("--slots", default="examples/e2e_slot_coverage.py")
    parser.add_argument("--length", default="examples/e2e_length.py")
    parser.add_argument("--out", default="benchmarks/results/e2e_length_price.md")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).parent))
    from machine import cpu_flags, cpu_model

    slots, length = _module(args.slots), _module(args.length)
    refs = references(args.references, "Write one fluent sentence describing this restaurant: ")
    groups = sample_groups(args.config, refs, slots, length)
    scores = {price: agreement(groups, price) for price in PRICES}
    chosen = max(scores, key=scores.get)
    answers = [t for g in groups for t in g["texts"]]
    over = sum(e > 0 for g in groups for e in g["excess"])
    lines = [
        "# The price of length in the E2E GRPO grader, chosen on validation",
        "",
        f"{cpu_model()}, {os.cpu_count()} cores ({cpu_flags()}); the SFT model sampled in float32.",
        "",
        "```bash",
        f"python benchmarks/e2e_length_price.py --config {args.config} --references {args.references}",
        "```",
        "",
        f"{len(groups)} validation inputs x {len(answers) // len(groups)} answers sampled from the SFT model "
        f"(mean {statistics.mean(len(t.split()) for t in answers):.1f} words; {over} of {len(answers)} "
        "over the allowance). Agreement: mean Kendall tau, within each input's group, between the grader's "
        "reward `slots - price * length` and sentence BLEU against the input's human references.",
        "",
        "| price | agreement with BLEU |",
        "|---|---|",
        *(f"| {'**' if p == chosen else ''}{p:g}{'**' if p == chosen else ''} | {s:.3f} |" for p, s in scores.items()),
        "",
        f"Chosen: {chosen:g}.",
        "",
    ]
    Path(args.out).write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
