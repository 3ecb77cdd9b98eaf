"""The merged model: a plain Hugging Face folder (weights + tokenizer)."""

from __future__ import annotations

from pathlib import Path

from tunesmith.chat.render import save_rendering
from tunesmith.paths import write_dir_atomic
from tunesmith.runfolder import MERGED


def save_merged(model, tokenizer, out_dir: Path) -> Path:
    """A plain HF folder (weights + tokenizer) that `AutoModelForCausalLM.from_pretrained` loads.

    A LoRA model is merged in place (the adapter's update is folded into the base weights), so
    call this last.
    """
    plain = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model

    def fill(folder: Path) -> None:
        plain.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        save_rendering(folder, tokenizer)

    return write_dir_atomic(out_dir / MERGED, fill)
