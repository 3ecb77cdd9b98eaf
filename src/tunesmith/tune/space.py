"""What `tunesmith tune` searches: `tune.space`, or the method's default space; each trial's values
drawn from it (Optuna's suggest calls) and written into the config.

A space maps config keys to a range (`SearchRange`: integers when both bounds are integers) or a list
of choices. `method.alpha_per_r` is the one key that is not a config key: it searches LoRA's scale
alpha / r apart from the rank, and is written as method.alpha = r x alpha_per_r.
"""

from __future__ import annotations

import copy
import json

from tunesmith.config import ALPHA_PER_R, Config, MethodConfig, SearchRange, config_from_dict
from tunesmith.encoders.recipe import ENCODER_OBJECTIVES
from tunesmith.errors import TunesmithError

Space = dict[str, SearchRange | list]

# Learning rates where fine-tuning usually works: an adapter takes larger steps than all weights.
ADAPTER_LR = SearchRange(low=1e-5, high=2e-3, log=True)
FULL_LR = SearchRange(low=1e-6, high=1e-4, log=True)


def default_space(cfg: Config) -> Space:
    """The levers that matter most for the config's method (docs/tuning.md has the table)."""
    lr = ADAPTER_LR if cfg.method.lora else FULL_LR
    # train.max_steps fixes the length of a run: searching epochs would change nothing.
    length = {} if cfg.train.max_steps else {"train.epochs": [1, 2, 3]}
    batch = {"train.batch_size": [4, 8, 16]}
    if cfg.method.objective in ENCODER_OBJECTIVES:
        space: Space = {"train.lr": lr, **length, **batch}
        if cfg.method.objective == "contrastive":
            space["encoder.temperature"] = SearchRange(low=0.01, high=0.1, log=True)
            space["encoder.hard_negatives"] = [0, 1, 3]
        return space
    if cfg.method.name == "dpo":
        return {"train.lr": lr, "method.beta": SearchRange(low=0.01, high=0.5, log=True)}
    if cfg.method.name == "grpo":
        return {"train.lr": lr}
    if cfg.method.name == "lora":
        return {
            "train.lr": lr,
            "method.r": [8, 16, 32, 64],
            ALPHA_PER_R: [0.5, 1, 2, 4],
            **length,
            **batch,
            "train.warmup_steps": [0, 10, 50],
        }
    return {"train.lr": lr, **length, **batch}


def search_space(cfg: Config) -> Space:
    return dict(cfg.tune.space) if cfg.tune.space is not None else default_space(cfg)


def describe(space: Space) -> str:
    """The space as canonical JSON: a resumed study must search the space it was created with."""
    return json.dumps(
        {key: entry.model_dump() if isinstance(entry, SearchRange) else entry for key, entry in space.items()},
        sort_keys=True,
    )


def suggest(trial, space: Space) -> dict:
    """One value per key from an Optuna trial (an enqueued trial gets its fixed values back)."""
    values = {}
    for key, entry in space.items():
        if not isinstance(entry, SearchRange):
            values[key] = trial.suggest_categorical(key, entry)
        elif isinstance(entry.low, int) and isinstance(entry.high, int):
            values[key] = trial.suggest_int(key, entry.low, entry.high, log=entry.log)
        else:
            values[key] = trial.suggest_float(key, float(entry.low), float(entry.high), log=entry.log)
    return values


def _config_value(raw: dict, key: str):
    if key == ALPHA_PER_R:
        return raw["method"]["alpha"] / raw["method"]["r"]
    node = raw
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _in_space(entry: SearchRange | list, value):
    """The space's own value equal to `value` (a choice keeps its type: alpha/r 2.0 is the choice 2),
    or None when the space does not hold it."""
    if not isinstance(entry, SearchRange):
        return next((choice for choice in entry if choice == value), None)
    if not isinstance(value, (int, float)) or not entry.low <= value <= entry.high:
        return None
    if isinstance(entry.low, int) and isinstance(entry.high, int) and value != int(value):
        return None
    return value


def config_values(raw: dict, space: Space) -> tuple[dict | None, str]:
    """The config's own value of every searched key, or None and the first key whose value lies
    outside the space (a trial can only take values the space holds)."""
    values = {}
    for key, entry in space.items():
        value = _config_value(raw, key)
        values[key] = _in_space(entry, value)
        if values[key] is None:
            return None, f"{key} = {value!r} is outside the space"
    return values, ""


def _set(raw: dict, dotted: str, value) -> None:
    *sections, name = dotted.split(".")
    node = raw
    for section in sections:
        node = node.setdefault(section, {})
    node[name] = value


def apply_values(raw: dict, values: dict) -> dict:
    """A copy of the config `raw` (a dict) with the trial's values written in."""
    raw = copy.deepcopy(raw)
    for key, value in values.items():
        if key != ALPHA_PER_R:
            _set(raw, key, value)
    if ALPHA_PER_R in values:
        rank = raw.get("method", {}).get("r", MethodConfig.model_fields["r"].default)
        _set(raw, "method.alpha", float(rank * values[ALPHA_PER_R]))
    return raw


def check_space(raw: dict, space: Space) -> None:
    """Every bound and choice makes a valid config on its own: a value the config refuses is an error now,
    named by its key, not a failed trial hours later."""
    for key, entry in space.items():
        candidates = (entry.low, entry.high) if isinstance(entry, SearchRange) else entry
        for value in candidates:
            try:
                config_from_dict(apply_values(raw, {key: value}), "the config")
            except TunesmithError as error:
                raise TunesmithError(f"tune.space.{key}: {value!r} does not make a valid config: {error}") from None
