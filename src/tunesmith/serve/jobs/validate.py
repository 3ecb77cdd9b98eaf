"""A job's files checked before it is queued, with the data package's reader and validator."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class DataCheck:
    ok: bool
    n_train: int = 0
    n_validation: int = 0
    message: str = ""
    param: str | None = None
    warnings: list[str] = field(default_factory=list)


def _describe(issues, limit: int = 10) -> str:
    parts = [f"line {i.line}: {i.field + ': ' if i.field else ''}{i.reason}" for i in issues[:limit]]
    more = f"; and {len(issues) - limit} more" if len(issues) > limit else ""
    return "; ".join(parts) + more


def check_job_files(
    train: dict, validation: dict | None, model: str, max_seq_len: int = 512, pairs: bool = False
) -> DataCheck:
    """Read and check the job's files; every error names the file id, line numbers and reasons.

    ``train`` / ``validation`` are file rows (``id``, ``filename``, ``path``). Uses the data
    package's reader and validator, so the service refuses exactly what ``tunesmith validate``
    refuses. ``pairs``: the job is a DPO job, whose files hold preference pairs.
    """
    from tunesmith.data.formats import read_examples
    from tunesmith.data.preference import read_pairs, validate_pairs
    from tunesmith.errors import TunesmithError

    read = read_pairs if pairs else read_examples

    loaded = {}
    for param, row in (("training_file", train), ("validation_file", validation)):
        if row is None:
            continue
        name = f"{row['id']} ({row['filename']})"
        if not Path(row["path"]).is_file():
            return DataCheck(False, message=f"{param} {row['id']} was deleted", param=param)
        try:
            data = read(row["path"])
        except TunesmithError as error:
            return DataCheck(False, message=str(error).replace(row["path"], name), param=param)
        loaded[param] = data
    issues = {param: [i for i in data.errors] for param, data in loaded.items()}
    try:  # token-level checks (empty completions, lengths) need the model's tokenizer
        from tunesmith.data.validate import validate_dataset
        from tunesmith.models import load_tokenizer

        report, val_report, _, _ = (validate_pairs if pairs else validate_dataset)(
            loaded["training_file"], load_tokenizer(model), max_seq_len, loaded.get("validation_file")
        )
        issues["training_file"] = report.issues
        if val_report is not None:
            issues["validation_file"] = val_report.issues
    except ImportError:
        pass
    warnings = []
    for param, row in (("training_file", train), ("validation_file", validation)):
        errors = [i for i in issues.get(param, []) if i.severity == "error"]
        name = f"{row['id']} ({row['filename']})" if row else ""
        if errors:
            lines = ", ".join(str(i.line) for i in errors[:20])
            return DataCheck(
                False,
                message=f"{param} {name} has {len(errors)} invalid line(s) (lines {lines}): {_describe(errors)}",
                param=param,
            )
        warned = [i for i in issues.get(param, []) if i.severity != "error"]
        if warned:
            warnings.append(f"{param} {name}: {len(warned)} warning(s): {_describe(warned, 5)}")
    n_val = len(loaded["validation_file"].examples) if "validation_file" in loaded else 0
    return DataCheck(True, len(loaded["training_file"].examples), n_val, warnings=warnings)
