"""A job's files checked before it is queued, by the trainer's own data preparation.

`prepare_data` runs on the data settings the trainer will get (format, max_seq_len and overlength
overrides, validation split and seed), so the service refuses exactly what the trainer would, and
the token store it builds is the trainer's cache hit. An encoder job's pairs are read by the
contrastive trainer's own reader and split the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from tunesmith.config import DataConfig
from tunesmith.errors import TunesmithError


@dataclass
class DataCheck:
    ok: bool
    n_examples: int = 0  # in the training file: what the auto hyperparameters are sized by
    n_train: int = 0  # what the trainer steps through (after the validation split; text: packed blocks)
    n_validation: int = 0
    message: str = ""
    param: str | None = None
    warnings: list[str] = field(default_factory=list)


def _describe(issues, limit: int = 10) -> str:
    parts = [f"line {i.line}: {i.field + ': ' if i.field else ''}{i.reason}" for i in issues[:limit]]
    more = f"; and {len(issues) - limit} more" if len(issues) > limit else ""
    return "; ".join(parts) + more


class _Files:
    """A job's file rows (``id``, ``filename``, ``path``) by parameter, named as the client knows them."""

    def __init__(self, train: dict, validation: dict | None):
        self.rows = {"training_file": train, "validation_file": validation}
        self.names = {param: f"{row['id']} ({row['filename']})" for param, row in self.rows.items() if row}

    def named(self, text: str) -> str:
        """``text`` with file ids, never the server's paths."""
        for param, row in self.rows.items():
            if row:
                text = text.replace(row["path"], self.names[param])
        return text

    def refused(self, message: str) -> DataCheck:
        """A reader refused the data with ``message``, which names the file it is about."""
        validation = self.rows["validation_file"]
        param = "validation_file" if validation and validation["path"] in message else "training_file"
        return DataCheck(False, message=self.named(message), param=param)


def check_job_files(
    train: dict, validation: dict | None, model: str, data: DataConfig, seed: int, pairs: bool = False
) -> DataCheck:
    """The job's data as the trainer will prepare it; every error names the file id, line numbers
    and reasons. ``train`` / ``validation`` are file rows (``id``, ``filename``, ``path``);
    ``pairs``: the job is a DPO job, whose files must hold preference pairs."""
    from tunesmith.data.prepare import prepare_data
    from tunesmith.models.vocabulary import load_tokenizer_for

    files = _Files(train, validation)
    names, named = files.names, files.named
    try:
        prepared = prepare_data(data, load_tokenizer_for(model, data), seed, strict=False)
    except TunesmithError as error:
        return files.refused(str(error))
    if prepared.pairs != pairs:
        what = (
            "does not hold preference pairs, which a dpo job trains on (OpenAI DPO JSONL or prompt/chosen/rejected)"
            if pairs
            else "holds preference pairs: train on them with method.name=dpo (method type dpo)"
        )
        return DataCheck(False, message=f"training_file {names['training_file']} {what}", param="training_file")
    # Without a validation file the held-out split's report (duplicates, overlap) is the training file's.
    reports = {"training_file": [prepared.train_report], "validation_file": []}
    reports["validation_file" if validation else "training_file"].append(prepared.validation_report)
    warnings = []
    for param, found in reports.items():
        found = [r for r in found if r is not None]
        errors = [i for r in found for i in r.issues if i.severity == "error"]
        n_errors = sum(r.n_errors for r in found)
        notes = "".join(f"; {note}" for r in found for note in r.notes)
        if n_errors:
            lines = ", ".join(str(i.line) for i in errors[:20])
            message = f"{param} {names[param]} has {n_errors} invalid line(s) (lines {lines}): {_describe(errors)}"
            return DataCheck(False, message=named(message + notes), param=param)
        warned = [i for r in found for i in r.issues if i.severity != "error"]
        n_warned = sum(r.n_warnings for r in found)
        if n_warned:
            warnings.append(named(f"{param} {names[param]}: {n_warned} warning(s): {_describe(warned, 5)}"))
    n_examples = prepared.train_report.n_examples
    if not validation and prepared.validation_report is not None:
        n_examples += prepared.validation_report.n_examples
    n_validation = len(prepared.validation) if prepared.validation is not None else 0
    return DataCheck(True, n_examples, len(prepared.train), n_validation, warnings=warnings)


def check_pair_files(train: dict, validation: dict | None, data: DataConfig, seed: int) -> DataCheck:
    """An encoder job's ``{"query", "positive", "negative"?}`` lines as the contrastive trainer reads
    and splits them (encoders/tasks.py); the first bad line refuses the job with its line and field."""
    from tunesmith.encoders.data import read_pairs
    from tunesmith.encoders.tasks import split_off

    files = _Files(train, validation)
    try:
        pairs = read_pairs(data.train, "train")
        held = read_pairs(data.validation, "validation") if data.validation else None
    except TunesmithError as error:
        # The reader says "PATH:7: positive: missing key"; once PATH is a file id, "line 7" reads better.
        return files.refused(re.sub(r"^(.+?):(\d+): ", r"\1 line \2: ", str(error)))
    kept, held = (pairs, held) if held is not None else split_off(pairs, data.val_fraction, seed)
    return DataCheck(True, len(pairs), len(kept), len(held))


def check_graded_files(train: dict, validation: dict | None, grader: dict, data: DataConfig, seed: int) -> DataCheck:
    """A reinforcement job's prompts as the GRPO trainer reads and splits them (train/rollout.py):
    OpenAI reinforcement JSONL whose lines hold every item field ``grader`` reads. Read without a
    tokenizer, in a moment: the job's create answers with the file, lines and fields at fault."""
    from tunesmith.data.prepare import split_indices
    from tunesmith.graders.data import read_graded
    from tunesmith.graders.schema import parse_grader

    files = _Files(train, validation)
    parsed = parse_grader(grader)  # the route checked it: it parses
    counts = {}
    for param, row in files.rows.items():
        if row is None:
            continue
        try:
            loaded = read_graded(row["path"], parsed)
        except TunesmithError as error:  # not UTF-8, no examples at all
            return files.refused(str(error))
        if loaded.errors:
            bad = list(dict.fromkeys(e.line for e in loaded.errors))
            lines = ", ".join(map(str, bad[:20]))
            message = (
                f"{param} {files.names[param]} has {len(bad)} invalid line(s) (lines {lines}): "
                f"{_describe(loaded.errors)}"
            )
            return DataCheck(False, message=files.named(message), param=param)
        counts[param] = len(loaded.examples)
    n_examples = counts["training_file"]
    if validation:
        return DataCheck(True, n_examples, n_examples, counts["validation_file"])
    kept, held = split_indices(n_examples, data.val_fraction, seed)
    return DataCheck(True, n_examples, len(kept), len(held) if held is not None else 0)
