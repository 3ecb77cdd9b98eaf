"""The LoRA adapter in PEFT's own format (the GGUF LoRA file is written by export/gguf.py)."""

from __future__ import annotations

from pathlib import Path

from tunesmith.paths import write_dir_atomic
from tunesmith.runfolder import ADAPTER


def save_adapter(model, out_dir: Path, tokenizer=None) -> Path:
    """PEFT's own format, so `PeftModel.from_pretrained(base, out_dir / "adapter")` loads it; the tokenizer
    beside it carries the tokens and chat template the run added (PEFT saves their trained rows itself)."""

    def fill(folder: Path) -> None:
        # Only the added rows (PEFT's trainable tokens), not a copy of the resized embedding: a PEFT user
        # resizes the base to the tokenizer beside the adapter, and the trained rows replace the new ones.
        model.save_pretrained(folder, save_embedding_layers=False)
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)

    return write_dir_atomic(out_dir / ADAPTER, fill)
