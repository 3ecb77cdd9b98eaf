"""`eval.task: preference`: held-out preference pairs scored by the base and the tuned model.

Each model gives the summed log-prob of both answers of every test pair (answer tokens only,
through the training code's own `sequence_logps`). Reported per model, each with a 95%
bootstrap interval over pairs:

* preference accuracy: the share of pairs whose preferred answer the model finds more likely than
  the other (the base model judged by its own log-probs), and the mean log-prob margin;
* for the tuned model also the accuracy and mean of DPO's implicit reward margin,
  beta * ((log pi - log pi_base)(preferred) - (log pi - log pi_base)(other)): what DPO trains;
* tuned minus base accuracy with a paired bootstrap interval (an interval above 0 is a real gain).

Ten prompts answered by both models follow, side by side.
"""

from __future__ import annotations

import gc
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from tunesmith.config import Config
from tunesmith.data.formats import with_system
from tunesmith.data.preference import read_pairs, tokenize_pair
from tunesmith.data.tokenize import IGNORE_INDEX, encode_chat
from tunesmith.errors import TunesmithError
from tunesmith.evaluate import metrics
from tunesmith.generation import generate
from tunesmith.models import load_model
from tunesmith.paths import write_text_atomic
from tunesmith.precision import autocast, default_device
from tunesmith.progress import tracked
from tunesmith.train.dpo import pair_batch, sequence_logps
from tunesmith.train.objective import to_device

SIDE_BY_SIDE = 10


def _mean_stats(values) -> metrics.ItemStats:
    rows = np.array([[float(v), 1.0] for v in values]).reshape(-1, 2)
    return metrics.ItemStats(rows, lambda sums: sums[0] / sums[1] if sums[1] else float("nan"))


def load_test_pairs(config: Config, tokenizer):
    """(pairs, their tokenized forms): pairs whose answers do not fit max_seq_len are left out."""
    path = config.data.test
    if not path:
        raise TunesmithError("data.test is not set: eval.task=preference needs a held-out file of pairs")
    loaded = read_pairs(path, config.data.format)
    if loaded.errors:
        raise TunesmithError(
            f"{path}: {len(loaded.errors)} invalid line(s), the first is {loaded.errors[0]}; see `tunesmith validate`"
        )
    pairs = [replace(p, prompt=with_system(p.prompt, config.data.system)) for p in loaded.examples]
    pairs = pairs[: config.eval.max_items]
    tokenized = [tokenize_pair(tokenizer, p, config.data.max_seq_len) for p in pairs]
    kept = [i for i, t in enumerate(tokenized) if _answers_left(t)]
    return [pairs[i] for i in kept], [tokenized[i] for i in kept]


def _answers_left(pair) -> bool:
    return all(any(label != IGNORE_INDEX for label in side.labels) for side in (pair.chosen, pair.rejected))


@torch.no_grad()
def pair_logps(model, tokenized, pad_id: int, config: Config) -> np.ndarray:
    """[pairs, 2] summed answer log-probs (column 0: the preferred answer)."""
    device = next(model.parameters()).device
    out = []
    size = config.eval.batch_size
    for start in tracked(range(0, len(tokenized), size), f"scoring {len(tokenized)} pairs"):
        chunk = tokenized[start : start + size]
        batch = to_device(pair_batch(chunk, pad_id, config.data.packing).sequences, device)
        with autocast(config.train.dtype, device):
            train = config.train
            logps = sequence_logps(model, batch, 2 * len(chunk), train.loss_chunk_size, train.fast_paths)
        out.append(logps.view(-1, 2).cpu())
    return torch.cat(out).double().numpy()


def _score(folder: str, pairs, tokenized, config: Config) -> tuple[np.ndarray, list[str]]:
    loaded = load_model(folder)
    model = loaded.model.to(default_device()).eval()
    logps = pair_logps(model, tokenized, loaded.tokenizer.pad_token_id, config)
    prompts = [encode_chat(loaded.tokenizer, p.prompt) for p in pairs[:SIDE_BY_SIDE]]
    with autocast(config.train.dtype, default_device()):
        texts = generate(
            model,
            loaded.tokenizer,
            prompts,
            max_new_tokens=config.eval.max_new_tokens,
            batch_size=config.eval.batch_size,
            temperature=config.eval.temperature,
            top_p=config.eval.top_p,
            seed=config.eval.seed,
        ).texts
    del model, loaded
    gc.collect()
    return logps, [t.strip() for t in texts]


def evaluate_preferences(config: Config, tuned_folder: str | None, out_dir: str, training: dict | None) -> dict:
    """Score the base (and the tuned) model on data.test; write eval.json and report.md to out_dir."""
    from tunesmith.models.vocabulary import load_tokenizer_for

    settings = config.eval
    pairs, tokenized = load_test_pairs(config, load_tokenizer_for(config.model, config.data, config.tokenizer))
    if not pairs:
        raise TunesmithError(f"{config.data.test}: no pair fits data.max_seq_len={config.data.max_seq_len}")

    def ci(stats):
        return metrics.bootstrap(stats, settings.bootstrap_resamples, settings.seed).as_dict()

    base, base_texts = _score(config.model, pairs, tokenized, config)
    base_hits = metrics.share_stats(base[:, 0] > base[:, 1])
    variants = {
        "base": {
            "preference_accuracy": ci(base_hits),
            "logp_margin": ci(_mean_stats(base[:, 0] - base[:, 1])),
        }
    }
    samples = [
        {"prompt": p.prompt[-1].content, "preferred": p.chosen, "base": t}
        for p, t in zip(pairs, base_texts, strict=False)
    ]
    gain = None
    if tuned_folder is not None:
        tuned, tuned_texts = _score(tuned_folder, pairs, tokenized, config)
        tuned_hits = metrics.share_stats(tuned[:, 0] > tuned[:, 1])
        reward = config.method.beta * ((tuned[:, 0] - base[:, 0]) - (tuned[:, 1] - base[:, 1]))
        variants["tuned"] = {
            "preference_accuracy": ci(tuned_hits),
            "logp_margin": ci(_mean_stats(tuned[:, 0] - tuned[:, 1])),
            "reward_accuracy": ci(metrics.share_stats(reward > 0)),
            "reward_margin": ci(_mean_stats(reward)),
        }
        gain = metrics.paired_difference(tuned_hits, base_hits, settings.bootstrap_resamples, settings.seed).as_dict()
        for sample, text in zip(samples, tuned_texts, strict=False):
            sample["tuned"] = text
    result = {
        "task": "preference",
        "model": config.model,
        "finetuned": tuned_folder,
        "test_file": config.data.test,
        "items": len(pairs),
        "beta": config.method.beta,
        "confidence": {"level": metrics.CONFIDENCE, "resamples": settings.bootstrap_resamples, "seed": settings.seed},
        "variants": variants,
        "gain": gain,
        "training": training,
        "samples": samples,
    }
    target = Path(out_dir)
    target.mkdir(parents=True, exist_ok=True)
    write_text_atomic(target / "eval.json", json.dumps(result, indent=2) + "\n")
    write_text_atomic(target / "report.md", _markdown(result))
    return result


def _cell(m: dict | None, digits: int) -> str:
    return "-" if m is None else f"{m['value']:.{digits}f} [{m['low']:.{digits}f}, {m['high']:.{digits}f}]"


def format_preferences(result: dict) -> str:
    """The terminal summary: one line per model, then the gain."""
    lines = [f"{result['items']} held-out pairs of {result['test_file']} (95% bootstrap intervals)"]
    for name, m in result["variants"].items():
        line = f"{name:5}  preference accuracy {_cell(m['preference_accuracy'], 1)}  "
        line += f"log-prob margin {_cell(m['logp_margin'], 2)}"
        if "reward_accuracy" in m:
            line += f"  implicit reward accuracy {_cell(m['reward_accuracy'], 1)}"
        lines.append(line)
    if result["gain"]:
        g = result["gain"]
        lines.append(f"tuned - base preference accuracy: {g['value']:+.1f} [{g['low']:+.1f}, {g['high']:+.1f}]")
    return "\n".join(lines)


def _markdown(result: dict) -> str:
    rows = ["| model | preference accuracy % | log-prob margin | implicit reward accuracy % | reward margin |"]
    rows.append("|---|---|---|---|---|")
    for name, m in result["variants"].items():
        cells = [_cell(m.get(k), d) for k, d in (("preference_accuracy", 1), ("logp_margin", 2))]
        cells += [_cell(m.get(k), d) for k, d in (("reward_accuracy", 1), ("reward_margin", 3))]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    text = [f"# Preference evaluation: {result['test_file']}", "", format_preferences(result), "", *rows, ""]
    text += ["## Side by side", ""]
    for sample in result["samples"]:
        for key in ("prompt", "preferred", "base", "tuned"):
            if key in sample:
                text.append(f"**{key}**: {sample[key]}  ")
        text.append("")
    return "\n".join(text)
