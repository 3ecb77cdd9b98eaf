"""Check a dataset before spending GPU time on it: line errors, lengths, duplicates, leakage."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from tunesmith.data.formats import Example, LineError, LoadedData
from tunesmith.data.tokenize import IGNORE_INDEX, TokenizedExample, tokenize_example, tokenize_examples


@dataclass
class TokenStats:
    """Per training sequence (after truncation; raw text: per packed block): min, mean, p95, max."""

    tokens: tuple[int, float, int, int]
    label_tokens: tuple[int, float, int, int]
    total_tokens: int
    total_label_tokens: int


@dataclass
class ValidationReport:
    path: str
    format: str
    n_examples: int
    issues: list[LineError]
    stats: TokenStats | None
    steps_per_epoch: int | None
    # Issues past the listed ones, counted by kind: {"error: unknown role": 12000}.
    unlisted: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # whole-file remarks (over-length examples, drops)

    @property
    def n_errors(self) -> int:
        unlisted = sum(n for kind, n in self.unlisted.items() if kind.startswith("error"))
        return sum(issue.severity == "error" for issue in self.issues) + unlisted

    @property
    def n_warnings(self) -> int:
        return len(self.issues) + sum(self.unlisted.values()) - self.n_errors

    @property
    def ok(self) -> bool:
        return not self.n_errors

    def render(self) -> str:
        lines = [f"{self.path} ({self.format}): {self.n_examples} examples"]
        several_files = len({issue.path for issue in self.issues}) > 1
        lines += [f"{issue if several_files else f'line {issue.line}: {issue.message}'}" for issue in self.issues]
        if self.unlisted:
            kinds = ", ".join(f"{n:,} {kind.removeprefix('error: ')}" for kind, n in self.unlisted.items())
            lines.append(f"and {sum(self.unlisted.values()):,} more: {kinds}")
        lines += self.notes
        if self.stats:
            for name, (low, mean, p95, high) in (
                ("tokens", self.stats.tokens),
                ("label tokens", self.stats.label_tokens),
            ):
                lines.append(f"{name} per sequence: min {low}, mean {mean:.1f}, p95 {p95}, max {high}")
            lines.append(f"total: {self.stats.total_tokens} tokens, {self.stats.total_label_tokens} label tokens")
        if self.steps_per_epoch is not None:
            lines.append(f"steps per epoch: {self.steps_per_epoch}")
        lines.append(f"{self.n_errors} errors, {self.n_warnings} warnings")
        return "\n".join(lines)


def validate_dataset(
    train: LoadedData,
    tokenizer,
    max_seq_len: int,
    validation: LoadedData | None = None,
    batch_size: int = 1,
    grad_accum: int = 1,
) -> tuple[ValidationReport, ValidationReport | None, list[TokenizedExample], list[TokenizedExample]]:
    """Reports for train (and validation), plus the tokenized examples so nobody tokenizes twice."""
    train_tokens = tokenize_examples(tokenizer, train.examples, max_seq_len)
    train_report = _report(train, tokenizer, train_tokens, max_seq_len)
    train_report.steps_per_epoch = math.ceil(len(train_tokens) / (batch_size * grad_accum))
    if validation is None:
        return train_report, None, train_tokens, []
    val_tokens = tokenize_examples(tokenizer, validation.examples, max_seq_len)
    val_report = _report(validation, tokenizer, val_tokens, max_seq_len, overlap(train, validation))
    return train_report, val_report, train_tokens, val_tokens


def _report(data: LoadedData, tokenizer, tokenized, max_seq_len: int, extra=()) -> ValidationReport:
    issues = data.errors + _length_issues(data, tokenizer, tokenized, max_seq_len)
    issues += duplicates(data) + list(extra)
    issues.sort(key=lambda issue: issue.line)
    return ValidationReport(data.path, data.format, len(data.examples), issues, token_stats(tokenized), None)


def _label_count(tokenized: TokenizedExample) -> int:
    return sum(label != IGNORE_INDEX for label in tokenized.labels)


def _length_issues(data: LoadedData, tokenizer, tokenized, max_seq_len: int) -> list[LineError]:
    by_line = {example.line: example for example in data.examples}
    issues = []
    for item in tokenized:
        kept = _label_count(item)
        if item.original_length <= max_seq_len:
            if not kept:
                issues.append(LineError(data.path, item.line, None, "no tokens to train on"))
            continue
        too_long = f"{item.original_length} tokens > max_seq_len {max_seq_len}"
        if not kept:
            reason = f"{too_long}: no label tokens are left in the first {max_seq_len} tokens"
            issues.append(LineError(data.path, item.line, None, reason))
            continue
        # Only over-length examples are tokenized again, to count the label tokens truncation drops.
        whole = tokenize_example(tokenizer, by_line[item.line], item.original_length)
        total = _label_count(whole)
        reason = (
            f"{too_long}: will be truncated to the first {max_seq_len} tokens, "
            f"losing {total - kept} of {total} label tokens"
        )
        issues.append(LineError(data.path, item.line, None, reason, severity="warning"))
    return issues


def _content(example: Example):
    return example.messages, example.text, example.tools


def duplicates(data: LoadedData, content=_content) -> list[LineError]:
    first: dict = {}
    issues = []
    for example in data.examples:
        seen = first.setdefault(content(example), example.line)
        if seen != example.line:
            issues.append(
                LineError(data.path, example.line, None, f"exact duplicate of line {seen}", severity="warning")
            )
    return issues


def overlap(train: LoadedData, validation: LoadedData, content=_content) -> list[LineError]:
    train_lines: dict = {}
    for example in train.examples:
        train_lines.setdefault(content(example), example.line)
    return [
        LineError(
            validation.path,
            example.line,
            None,
            f"identical to train line {train_lines[content(example)]}",
            severity="warning",
        )
        for example in validation.examples
        if content(example) in train_lines
    ]


def _summary(values: list[int]) -> tuple[int, float, int, int]:
    ordered = sorted(values)
    p95 = ordered[math.ceil(0.95 * len(ordered)) - 1]  # nearest-rank percentile
    return ordered[0], sum(ordered) / len(ordered), p95, ordered[-1]


def token_stats(tokenized: list[TokenizedExample]) -> TokenStats | None:
    if not tokenized:
        return None
    lengths = [len(item.input_ids) for item in tokenized]
    labels = [_label_count(item) for item in tokenized]
    return TokenStats(_summary(lengths), _summary(labels), sum(lengths), sum(labels))
