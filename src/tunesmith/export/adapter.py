"""The LoRA adapter in PEFT's own format (the GGUF LoRA file is written by export/gguf.py)."""

from __future__ import annotations

from pathlib import Path

from tunesmith.paths import write_dir_atomic
from tunesmith.runfolder import ADAPTER


def save_adapter(model, out_dir: Path) -> Path:
    """PEFT's own format, so `PeftModel.from_pretrained(base, out_dir / "adapter")` loads it."""
    return write_dir_atomic(out_dir / ADAPTER, lambda folder: model.save_pretrained(folder))
