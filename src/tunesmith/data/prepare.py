"""From a DataConfig to validated, tokenized train and validation sets (one place for train,
validate, eval and the service)."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from tunesmith.config import DataConfig
from tunesmith.data.cache import cache_key, load_or_build
from tunesmith.data.formats import Example, LoadedData, read_examples, with_system
from tunesmith.data.preference import holds_pairs, read_pairs, validate_pairs
from tunesmith.data.tokenize import TokenizedExample
from tunesmith.data.validate import ValidationReport, validate_dataset
from tunesmith.errors import TunesmithError


@dataclass
class PreparedData:
    # TokenizedExample items, or TokenizedPair items for preference data (`pairs`).
    train: list[TokenizedExample]
    validation: list[TokenizedExample]
    validation_examples: list[Example]
    train_report: ValidationReport
    validation_report: ValidationReport | None
    pairs: bool = False

    @property
    def errors(self) -> list:
        reports = (self.train_report, self.validation_report)
        return [i for r in reports if r is not None for i in r.issues if i.severity == "error"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        """One line per file: the detected format, the size, and how many warnings to look at."""
        lines = []
        for report in (self.train_report, self.validation_report):
            if report is not None:
                warnings = sum(i.severity == "warning" for i in report.issues)
                hint = " (`tunesmith validate` lists them)" if warnings else ""
                lines.append(f"{report.path}: {report.format}, {report.n_examples} examples, {warnings} warnings{hint}")
        return "\n".join(lines)

    def render(self) -> str:
        parts = [self.train_report.render()]
        if self.validation_report is not None:
            parts.append(self.validation_report.render())
        return "\n\n".join(parts)


def with_default_system(examples: list[Example], system: str | None) -> list[Example]:
    return [e if e.text is not None else replace(e, messages=with_system(e.messages, system)) for e in examples]


def read_data(path: str, cfg: DataConfig) -> LoadedData:
    loaded = read_examples(path, cfg.format, cfg.columns)
    loaded.examples = with_default_system(loaded.examples, cfg.system)
    return loaded


def read_pair_data(path: str, cfg: DataConfig) -> LoadedData:
    loaded = read_pairs(path, cfg.format)
    loaded.examples = [replace(p, prompt=with_system(p.prompt, cfg.system)) for p in loaded.examples]
    return loaded


def split_off_validation(loaded: LoadedData, fraction: float, seed: int) -> tuple[LoadedData, LoadedData | None]:
    if fraction <= 0 or len(loaded.examples) < 2:
        return loaded, None
    order = list(range(len(loaded.examples)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(fraction * len(order)))
    held = set(order[:n_val])
    train = [e for i, e in enumerate(loaded.examples) if i not in held]
    val = [e for i, e in enumerate(loaded.examples) if i in held]
    return (
        LoadedData(loaded.path, loaded.format, train, loaded.errors),
        LoadedData(loaded.path, loaded.format, val, []),
    )


def prepare_data(
    cfg: DataConfig, tokenizer, seed: int = 0, batch_size: int = 1, grad_accum: int = 1, strict: bool = True
) -> PreparedData:
    """Read, validate and tokenize (once: see data/cache.py); with strict, any error-level problem
    raises TunesmithError."""

    def build() -> PreparedData:
        pairs = holds_pairs(cfg.train, cfg.format)
        read, check = (read_pair_data, validate_pairs) if pairs else (read_data, validate_dataset)
        train = read(cfg.train, cfg)
        if cfg.validation:
            validation = read(cfg.validation, cfg)
        else:
            train, validation = split_off_validation(train, cfg.val_fraction, seed)
        report, val_report, train_tok, val_tok = check(
            train, tokenizer, cfg.max_seq_len, validation, batch_size=batch_size, grad_accum=grad_accum
        )
        shown = validation.examples if validation else []
        if pairs:  # samples (train/samples.py) show the prompt with the preferred answer as reference
            shown = [pair.side(pair.chosen) for pair in shown]
        return PreparedData(train_tok, val_tok, shown, report, val_report, pairs)

    prepared = load_or_build(cache_key(cfg, tokenizer, (seed, batch_size, grad_accum)), build)
    if strict and not prepared.ok:
        errors = prepared.errors
        shown = "; ".join(str(e) for e in errors[:20])
        more = f" (and {len(errors) - 20} more)" if len(errors) > 20 else ""
        raise TunesmithError(f"data has {len(errors)} error(s), fix them first: {shown}{more}")
    return prepared
