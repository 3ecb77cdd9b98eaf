"""Lean storage for adapter training under bf16 autocast: frozen weights and activations in bf16.

Autocast casts a float32 weight to bf16 on every forward, and when the layer's input needs a
gradient the bf16 copy is kept for backward: a LoRA run holds its frozen base once in float32 and
again, layer by layer, in bf16. Its activations are cast too, once per consuming layer: the
normalised hidden state that feeds q, k, v (and their LoRA A matrices) is copied to bf16 six times,
and PEFT casts the bf16 input of o_proj and down_proj up to float32 before autocast casts it back.

`LeanStorage` stores the frozen decoder weights in bf16 (the matmuls see exactly the values
autocast would have made), casts each norm's output to bf16 once, and lets PEFT pass bf16 inputs
through. The computation is unchanged; the copies are gone. Embeddings, the output layer and the
norm weights stay float32. `restore` reads the original float32 weights back from the model folder
before anything is merged or exported, so the saved model is the original base plus the adapter.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open

from tunesmith.train.loss import output_layer


def _is_norm(module: torch.nn.Module) -> bool:
    return type(module).__name__.endswith("RMSNorm")


class LeanStorage:
    def __init__(self, model, dtype: torch.dtype):
        self.dtype = dtype
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        decoder_prefix = next(n for n, m in base.named_modules() if m is output_layer(model)[0])
        self.frozen: dict[str, torch.nn.Linear] = {}
        self.hooks = []
        self.peft_layers = []
        for name, module in base.named_modules():
            if not name.startswith(decoder_prefix):
                continue
            if isinstance(module, torch.nn.Linear) and not module.weight.requires_grad:
                # PEFT names the wrapped layer `<name>.base_layer`; the checkpoint knows it as <name>.
                self.frozen[name.replace(".base_layer", "") + ".weight"] = module
                module.weight.data = module.weight.data.to(dtype)
            elif _is_norm(module):
                self.hooks.append(module.register_forward_hook(self._cast_output))
            if hasattr(module, "cast_input_dtype_enabled"):
                module.cast_input_dtype_enabled = False
                self.peft_layers.append(module)
        # from_pretrained memory-maps the checkpoint; every page a cast read stays resident until no
        # tensor uses the map, so the tensors kept as they are get their own copy.
        cast = {id(m.weight) for m in self.frozen.values()}
        for param in base.parameters():
            if id(param) not in cast:
                param.data = param.data.clone()

    def _cast_output(self, module, args, output: torch.Tensor) -> torch.Tensor:
        if torch.is_autocast_enabled(output.device.type):
            return output.to(self.dtype)
        return output

    def restore(self, model_path: str) -> None:
        """Put the original float32 frozen weights back and undo the casts."""
        original = _read_weights(Path(model_path), set(self.frozen))
        for key, module in self.frozen.items():
            module.weight.data = original.pop(key)
        for hook in self.hooks:
            hook.remove()
        for module in self.peft_layers:
            module.cast_input_dtype_enabled = True


def _read_weights(folder: Path, keys: set[str]) -> dict[str, torch.Tensor]:
    """Just these tensors, as float32, from the folder's safetensors files (memory-mapped: the rest of
    the checkpoint is never read); a folder in another format is loaded whole by transformers."""
    found: dict[str, torch.Tensor] = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(file, framework="pt") as weights:
            for key in keys & set(weights.keys()):
                found[key] = weights.get_tensor(key).to(torch.float32, copy=True)
    if found.keys() == keys:
        return found
    from transformers import AutoModelForCausalLM

    state = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).state_dict()
    return {key: state[key] for key in keys}
