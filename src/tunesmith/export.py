"""Run outputs: the PEFT adapter, the merged HF folder, and the loss plot."""

from __future__ import annotations

from pathlib import Path

from tunesmith.train.checkpoint import write_dir_atomic


def save_adapter(model, out_dir: Path) -> Path:
    """PEFT's own format, so `PeftModel.from_pretrained(base, out_dir / "adapter")` loads it."""
    return write_dir_atomic(out_dir / "adapter", lambda folder: model.save_pretrained(folder))


def save_merged(model, tokenizer, out_dir: Path) -> Path:
    """A plain HF folder (weights + tokenizer) that `AutoModelForCausalLM.from_pretrained` loads.

    A LoRA model is merged in place (the adapter's update is folded into the base weights), so
    call this last.
    """
    plain = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model

    def fill(folder: Path) -> None:
        plain.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    return write_dir_atomic(out_dir / "merged", fill)


def plot_losses(metrics: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(m["step"], m["train_loss"]) for m in metrics if m.get("train_loss") is not None]
    val = [(m["step"], m["val_loss"]) for m in metrics if m.get("val_loss") is not None]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss")
    if val:
        ax.plot(*zip(*val, strict=True), marker="o", label="validation loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy per label token")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
