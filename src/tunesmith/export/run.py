"""Export a finished run folder for another runtime: `tunesmith export RUN_DIR --to ...`."""

from __future__ import annotations

from pathlib import Path

import yaml

from tunesmith.errors import TunesmithError
from tunesmith.export.gguf import LORA_OUTTYPES, OUTTYPES, write_lora_gguf, write_model_gguf
from tunesmith.runfolder import ADAPTER, CONFIG, MERGED

EXPORT_TARGETS = ("gguf", "ollama", "gguf-lora")
DEFAULT_OUTTYPE = "f16"


def _run_system_prompt(run: Path) -> str | None:
    """The run's `data.system`, read from its config.yaml as written (no validation needed to read one key)."""
    path = run / CONFIG
    if not path.is_file():
        return None
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return (raw.get("data") or {}).get("system")


def _default_output(run: Path, to: str, outtype: str) -> Path:
    name = run.resolve().name
    return {
        "gguf": run / f"{name}-{outtype}.gguf",
        "gguf-lora": run / f"{name}-lora-{outtype}.gguf",
        "ollama": run / "ollama",
    }[to]


def export_run(
    run_dir: str | Path, to: str = "gguf", outtype: str = DEFAULT_OUTTYPE, out: str | Path | None = None
) -> Path:
    """Write the run's model for `to` and return where it went (a file, or the Ollama folder)."""
    run = Path(run_dir)
    if to not in EXPORT_TARGETS:
        raise TunesmithError(f"--to {to!r}: choose one of {', '.join(EXPORT_TARGETS)}")
    allowed = LORA_OUTTYPES if to == "gguf-lora" else tuple(OUTTYPES)
    if outtype not in allowed:
        raise TunesmithError(f"--outtype {outtype!r} for --to {to}: choose one of {', '.join(allowed)}")
    merged = run / MERGED
    if not (merged / "config.json").is_file():
        raise TunesmithError(f"{run} is not a finished run folder: it has no merged/config.json")
    target = Path(out) if out else _default_output(run, to, outtype)
    name = run.resolve().name
    if to == "gguf":
        return write_model_gguf(merged, target, outtype, name)
    if to == "gguf-lora":
        adapter = run / ADAPTER
        if not (adapter / "adapter_config.json").is_file():
            raise TunesmithError(f"{run} has no LoRA adapter (a full fine-tune?): export it with --to gguf")
        return write_lora_gguf(adapter, merged, target, outtype, name)
    from tunesmith.export.ollama import write_ollama

    return write_ollama(merged, target, outtype, name, _run_system_prompt(run))
