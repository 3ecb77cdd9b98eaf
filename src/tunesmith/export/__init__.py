"""What a run leaves behind and where it can go: the PEFT adapter, the merged HF folder, the loss
plot, and exports for other runtimes (GGUF for llama.cpp / LM Studio, an Ollama folder, a GGUF LoRA).

`export_run` (export/run.py) is what `tunesmith export` and the service call.
"""

from tunesmith.export.adapter import save_adapter
from tunesmith.export.merged import save_merged
from tunesmith.export.plot import plot_losses
from tunesmith.export.run import EXPORT_TARGETS, export_run

__all__ = ["EXPORT_TARGETS", "export_run", "plot_losses", "save_adapter", "save_merged"]
