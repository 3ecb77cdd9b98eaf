"""From a DataConfig to validated, tokenized train and validation sets (one place for train,
validate, eval and the service).

Each data source is validated and tokenized once into a memory-mapped token store (data/store.py),
keyed by the bytes of its files, the tokenizer and chat template and every setting that changes
its tokens; train and validation are then views of it (data/views.py). The split off a single
file, duplicate and overlap checks, token statistics: arrays, computed on every prepare.
Preference pairs (DPO) are read, checked and tokenized in memory on every prepare: pair files are
thousands of lines, not millions.
"""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass, replace

import numpy as np

from tunesmith.chat.tools import FALLBACK_VERSION
from tunesmith.config import DataConfig
from tunesmith.data.build import BuildOptions, build_store, examples_at
from tunesmith.data.formats import Example, LineError, LoadedData, with_system
from tunesmith.data.issues import LISTED, IssueLog
from tunesmith.data.preference import holds_pairs, read_pairs, validate_pairs
from tunesmith.data.replay import mix
from tunesmith.data.sources import Source, content_hash, open_source
from tunesmith.data.store import STORE_VERSION, TokenStore, build_lock, open_store, store_root
from tunesmith.data.validate import TokenStats, ValidationReport
from tunesmith.data.views import view
from tunesmith.errors import TunesmithError

# Validation examples read back from the source for the before/after samples of a run.
SAMPLE_CANDIDATES = 64


@dataclass
class PreparedData:
    # A view (data/views.py): len, [i] -> TokenizedExample, lengths, label counts; or, for
    # preference data (`pairs`), a list of TokenizedPair.
    train: object
    validation: object | None
    validation_examples: list[Example]
    train_report: ValidationReport
    validation_report: ValidationReport | None
    pairs: bool = False

    @property
    def errors(self) -> list:
        reports = (self.train_report, self.validation_report)
        return [i for r in reports if r is not None for i in r.issues if i.severity == "error"]

    @property
    def n_errors(self) -> int:
        return sum(r.n_errors for r in (self.train_report, self.validation_report) if r is not None)

    @property
    def ok(self) -> bool:
        return not self.n_errors

    def summary(self) -> str:
        """One line per file: the detected format, the size, and how many warnings to look at."""
        lines = []
        for report in (self.train_report, self.validation_report):
            if report is not None:
                warnings = report.n_warnings
                hint = " (`tunesmith validate` lists them)" if warnings else ""
                lines.append(f"{report.path}: {report.format}, {report.n_examples} examples, {warnings} warnings{hint}")
        return "\n".join(lines)

    def render(self) -> str:
        parts = [self.train_report.render()]
        if self.validation_report is not None:
            parts.append(self.validation_report.render())
        return "\n\n".join(parts)


def _tokenizer_identity(tokenizer) -> bytes:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    vocabulary = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    return vocabulary.encode() + repr((tokenizer.chat_template, tokenizer.eos_token)).encode()


def store_key(source: Source, options: BuildOptions, tokenizer, namespace: str | None = None) -> str:
    """Everything the store's tokens depend on: file bytes, tokenizer, template, format options; and
    ``namespace`` (DataConfig.cache_namespace), which keeps stores apart that would be the same."""
    digest = hashlib.blake2b(digest_size=16)
    if namespace is not None:
        digest.update(repr(("namespace", namespace)).encode())
    digest.update(content_hash(source.files).encode())
    digest.update(_tokenizer_identity(tokenizer))
    settings = (source.format, source.columns, options.system, options.max_seq_len, options.overlength)
    # The tool rendering follows from the template (in the tokenizer identity) and the fallback's version.
    digest.update(repr((settings, STORE_VERSION, FALLBACK_VERSION)).encode())
    return digest.hexdigest()


def load_store(spec: str, cfg: DataConfig, tokenizer) -> tuple[Source, BuildOptions, TokenStore]:
    """The token store of `spec`: mapped from the cache, or built (by one process at a time)."""
    source = open_source(spec, cfg.format, cfg.columns)
    options = BuildOptions(source.files, source.format, source.columns, cfg.system, cfg.max_seq_len, cfg.overlength)
    key = store_key(source, options, tokenizer, cfg.cache_namespace)
    path = store_root() / key
    with build_lock(key):
        store = open_store(path) if path.exists() else None
        if store is None:
            store = build_store(source, tokenizer, options, path, cfg.num_workers or os.cpu_count() or 1)
    return source, options, store


def split_indices(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(train, held-out) positions, each in file order; a pure function of (n, fraction, seed)."""
    if fraction <= 0 or n < 2:
        return np.arange(n), None
    order = list(range(n))
    random.Random(seed).shuffle(order)
    held = np.zeros(n, dtype=bool)
    held[order[: max(1, round(fraction * n))]] = True
    return np.flatnonzero(~held), np.flatnonzero(held)


def _issue(store: TokenStore, files: np.ndarray, lines: np.ndarray, position: int, reason: str) -> LineError:
    return LineError(store.files[files[position]], int(lines[position]), None, reason, severity="warning")


def _duplicates(store: TokenStore, data, log: IssueLog) -> None:
    """Exact duplicates within one set, by content hash: every copy after the first is a warning."""
    _, first, inverse = np.unique(data.hashes, return_index=True, return_inverse=True)
    copies = np.flatnonzero(first[inverse] != np.arange(len(data.hashes)))
    for position in copies[:LISTED]:
        seen = int(data.hash_lines[first[inverse[position]]])
        log.add(_issue(store, data.hash_files, data.hash_lines, position, f"exact duplicate of line {seen}"))
    log.count("warning", "exact duplicate of line", len(copies) - min(len(copies), LISTED))


def _overlap(store: TokenStore, train, validation, log: IssueLog) -> None:
    """Validation examples identical to a train example (by content hash)."""
    unique, first = np.unique(train.hashes, return_index=True)
    if not len(unique):
        return
    at = np.searchsorted(unique, validation.hashes).clip(max=len(unique) - 1)
    shared = np.flatnonzero(unique[at] == validation.hashes)
    for position in shared[:LISTED]:
        seen = int(train.hash_lines[first[at[position]]])
        reason = f"identical to train line {seen}"
        log.add(_issue(store, validation.hash_files, validation.hash_lines, position, reason))
    log.count("warning", "identical to train line", len(shared) - min(len(shared), LISTED))


def _summary(values: np.ndarray) -> tuple[int, float, int, int]:
    ordered = np.sort(values)
    p95 = ordered[int(np.ceil(0.95 * len(ordered))) - 1]  # nearest-rank percentile
    return int(ordered[0]), float(ordered.mean()), int(p95), int(ordered[-1])


def _stats(data) -> TokenStats | None:
    if not len(data):
        return None
    return TokenStats(
        _summary(data.lengths), _summary(data.label_counts), int(data.lengths.sum()), int(data.label_counts.sum())
    )


def _overlength_notes(store: TokenStore, options: BuildOptions) -> list[str]:
    over = store.meta["overlength"]
    if not over["count"]:
        return []
    many = f"over max_seq_len {options.max_seq_len}: {over['count']:,} examples"
    if options.overlength == "drop":
        return [f"{many}, dropped (data.overlength: drop)"]
    if options.overlength == "truncate_prompt":
        return [f"{many}, their prompts cut from the start (data.overlength: truncate_prompt)"]
    return [
        f"{many} (the longest: {over['longest']} tokens): data.max_seq_len: {over['longest']} fits them all; "
        "or set data.overlength: drop (leave them out, counted) or truncate_prompt (cut the start of the "
        "prompt, keep the answer)"
    ]


def _report(source: Source, store, options, data, whole_file: bool, steps_per_epoch=None, train=None):
    log = IssueLog(tuple(store.files))
    if whole_file:  # line errors belong to the file's own report (the train report when split)
        listed, unlisted = store.issues()
        log.extend(listed)
        for kind, n in unlisted.items():
            severity, _, name = kind.partition(": ")
            log.count(severity, name, n)
    _duplicates(store, data, log)
    if train is not None:
        _overlap(store, train, data, log)
    issues, unlisted = log.done()
    notes = _overlength_notes(store, options) if whole_file else []
    n_examples = len(data.hashes)  # examples, not packed blocks
    return ValidationReport(
        source.spec, source.format, n_examples, issues, _stats(data), steps_per_epoch, unlisted, notes
    )


def prepare_data(
    cfg: DataConfig, tokenizer, seed: int = 0, batch_size: int = 1, grad_accum: int = 1, strict: bool = True
) -> PreparedData:
    """Validate and tokenize (once per source: see data/store.py) and split; with strict, any
    error-level problem raises TunesmithError."""
    prepared = (_prepare_pairs if holds_pairs(cfg.train, cfg.format) else _prepare_examples)(
        cfg, tokenizer, seed, batch_size, grad_accum
    )
    if strict and not prepared.ok:
        errors = prepared.errors
        shown_errors = "; ".join(str(e) for e in errors[:20])
        more = f" (and {prepared.n_errors - 20:,} more)" if prepared.n_errors > 20 else ""
        reports = (prepared.train_report, prepared.validation_report)
        notes = "".join(f"; {note}" for r in reports if r is not None for note in r.notes)
        raise TunesmithError(f"data has {prepared.n_errors:,} error(s), fix them first: {shown_errors}{more}{notes}")
    return prepared


def _prepare_examples(cfg: DataConfig, tokenizer, seed: int, batch_size: int, grad_accum: int) -> PreparedData:
    source, options, store = load_store(cfg.train, cfg, tokenizer)
    if cfg.validation:
        train = view(store, np.arange(store.n_examples), cfg.max_seq_len)
        val_source, val_options, val_store = load_store(cfg.validation, cfg, tokenizer)
        validation = view(val_store, np.arange(val_store.n_examples), cfg.max_seq_len)
    else:
        train_index, held = split_indices(store.n_examples, cfg.val_fraction, seed)
        train = view(store, train_index, cfg.max_seq_len)
        val_source, val_options, val_store = source, options, store
        validation = view(store, held, cfg.max_seq_len) if held is not None else None
    train_report = _report(source, store, options, train, True)
    val_report = None
    shown: list[Example] = []
    if validation is not None:
        val_report = _report(val_source, val_store, val_options, validation, val_store is not store, train=train)
        wanted = list(zip(validation.hash_files, validation.hash_lines, strict=True))[:SAMPLE_CANDIDATES]
        shown = examples_at(val_source, val_options, wanted) if val_store.meta["format"] != "text" else []
    if cfg.replay:  # after the checks: they are about the user's data, not the general text
        text = cfg.model_copy(update={"format": "text", "columns": None, "system": None, "replay": None})
        _, _, replay_store = load_store(cfg.replay.path, text, tokenizer)
        blocks = view(replay_store, np.arange(replay_store.n_examples), cfg.max_seq_len)
        train, note = mix(train, blocks, cfg.replay, seed)
        train_report.notes.append(note)
    train_report.steps_per_epoch = -(-len(train) // (batch_size * grad_accum))
    return PreparedData(train, validation, shown, train_report, val_report)


def _read_pairs(path: str, cfg: DataConfig) -> LoadedData:
    loaded = read_pairs(path, cfg.format)
    loaded.examples = [replace(p, prompt=with_system(p.prompt, cfg.system)) for p in loaded.examples]
    return loaded


def _prepare_pairs(cfg: DataConfig, tokenizer, seed: int, batch_size: int, grad_accum: int) -> PreparedData:
    if cfg.replay:
        raise TunesmithError("data.replay mixes general text into chat examples; preference pairs (DPO) cannot take it")
    train = _read_pairs(cfg.train, cfg)
    validation = None
    if cfg.validation:
        validation = _read_pairs(cfg.validation, cfg)
    else:
        train_index, held = split_indices(len(train.examples), cfg.val_fraction, seed)
        if held is not None:
            validation = LoadedData(train.path, train.format, [train.examples[i] for i in held], [])
            train = LoadedData(train.path, train.format, [train.examples[i] for i in train_index], train.errors)
    report, val_report, train_pairs, val_pairs = validate_pairs(
        train, tokenizer, cfg.max_seq_len, validation, batch_size=batch_size, grad_accum=grad_accum
    )
    # samples (train/samples.py) show the prompt with the preferred answer as the reference
    shown = [pair.side(preferred=True) for pair in validation.examples] if validation else []
    return PreparedData(train_pairs, val_pairs, shown, report, val_report, pairs=True)
