"""Lean storage for adapter training: frozen weights in the compute dtype, each activation kept once.

Autocast casts a float32 weight to bf16 on every forward, and when the layer's input needs a
gradient the bf16 copy is kept for backward: a LoRA run holds its frozen base once in float32 and
again, layer by layer, in bf16. Its activations are cast too, once per consuming layer: the
normalised hidden state that feeds q, k, v (and their LoRA A matrices) is copied to bf16 six times,
and PEFT casts the bf16 input of o_proj and down_proj up to float32 before autocast casts it back.

`LeanStorage` stores the frozen decoder weights in the compute dtype (under bf16 the matmuls see
exactly the values autocast would have made), casts each norm's output to it once (for Llama-style
norms, in one autograd node that keeps no input for backward: in float32 too, where autograd would
keep every norm's input, a [tokens, hidden] tensor twice per layer), and lets PEFT pass bf16 inputs
through. Only norms whose output feeds linear layers are touched, found by one tiny forward: a
norm added to the residual (Gemma's post-norms) or feeding the rotary embedding (Qwen3's and
Gemma 3's q/k-norms) keeps its float32 output, as autocast would. The computation is unchanged;
the copies are gone. Embeddings, the output layer and the norm weights stay float32. `restore`
reads the original float32 weights back from the model folder before anything is merged or
exported, so the saved model is the original base plus the adapter.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open

from tunesmith.kernels import with_mixin
from tunesmith.kernels.label_loss import output_layer
from tunesmith.precision import active_dtype


def _norm_epsilon(module: torch.nn.Module) -> float | None:
    eps = getattr(module, "variance_epsilon", getattr(module, "eps", None))
    return eps if isinstance(eps, float) else None


@torch.no_grad()
def norm_kind(module: torch.nn.Module) -> str | None:
    """ "llama" for an RMSNorm computing weight * x / rms(x) (Llama, Qwen, Mistral, Phi), "gemma" for
    one computing (1 + weight) * x / rms(x) (Gemma 2 and 3), else None: told by what the module
    computes on a probe input, not by its class or its code."""
    weight, eps = getattr(module, "weight", None), _norm_epsilon(module)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 1 or eps is None or list(module.children()):
        return None
    probe = torch.randn(3, weight.shape[0], generator=torch.Generator().manual_seed(0)).to(weight.device)
    normed = probe * torch.rsqrt(probe.pow(2).mean(-1, keepdim=True) + eps)
    try:
        out = module(probe.to(weight.dtype)).float()
    except (TypeError, RuntimeError):
        return None
    for kind, scale in (("llama", weight.float()), ("gemma", 1 + weight.float())):
        if out.shape == normed.shape and torch.allclose(out, normed * scale, rtol=1e-5, atol=1e-6):
            return kind
    return None


@torch.no_grad()
def _feeding_linears(model: torch.nn.Module, norms: list[torch.nn.Module]) -> set[int]:
    """ids of the `norms` whose output (or a view of it: the output layer reads a slice) some linear
    layer takes as its input, in one two-token forward of the causal LM `model`."""
    outputs: dict[int, tuple[torch.nn.Module, torch.Tensor]] = {}
    feeding: set[int] = set()

    def record(norm, args, output):
        # Held until the end, so no later tensor is given its memory.
        outputs[output.data_ptr()] = (norm, output)

    def consume(linear, args):
        if args and args[0].data_ptr() in outputs:
            feeding.add(id(outputs[args[0].data_ptr()][0]))

    hooks = [n.register_forward_hook(record) for n in norms]
    hooks += [m.register_forward_pre_hook(consume) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    try:
        device = next(model.parameters()).device
        model(input_ids=torch.zeros((1, 2), dtype=torch.long, device=device), use_cache=False)
    finally:
        for hook in hooks:
            hook.remove()
    return feeding


class _CastNorm(torch.autograd.Function):
    """Llama's RMSNorm, float32 inside, returned in `dtype`.

    Autograd would keep the float32 input for backward. This keeps its own output, which the
    projections after it keep anyway (one tensor, stored once), and the per-row 1/rms: backward
    recovers the normalised input as output / weight, as precise as a bf16 copy of it would be.
    A weight that has a zero, or may get one (it is trained), is not divided by; then the
    normalised input is kept in `dtype`.
    """

    @staticmethod
    def forward(ctx, x, weight, eps: float, dtype: torch.dtype, divide: bool):
        x32 = x.float()
        inv_rms = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
        normed = x32 * inv_rms
        out = (weight * normed.to(x.dtype)).to(dtype)
        ctx.divide = divide
        ctx.save_for_backward(out if ctx.divide else normed.to(dtype), inv_rms, weight)
        ctx.input_dtype = x.dtype
        return out

    @staticmethod
    def backward(ctx, grad):
        kept, inv_rms, weight = ctx.saved_tensors
        normed = kept.float() / weight if ctx.divide else kept.float()
        grad = grad.float()
        grad_weight = (grad * normed).flatten(0, -2).sum(0).to(weight.dtype) if ctx.needs_input_grad[1] else None
        scaled = grad * weight
        grad_x = (scaled - normed * (scaled * normed).mean(-1, keepdim=True)).mul_(inv_rms)
        return grad_x.to(ctx.input_dtype), grad_weight, None, None, None


def _lean_norm_forward(norm, hidden: torch.Tensor, divide: bool) -> torch.Tensor:
    return _CastNorm.apply(hidden, norm.weight, _norm_epsilon(norm), active_dtype(hidden), divide)


class _LeanNorm:
    """Mixed into a Llama-style norm's class: its forward is `_CastNorm`."""

    lean_divide: bool

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return _lean_norm_forward(self, hidden, self.lean_divide)


class LeanStorage:
    def __init__(self, model, dtype: torch.dtype):
        self.dtype = dtype
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        decoder = output_layer(model)[0]
        decoder_prefix = next(n for n, m in base.named_modules() if m is decoder)
        self.frozen: dict[str, torch.nn.Linear] = {}
        self.hooks = []
        self.norms = []
        self.peft_layers = []
        kinds = {id(m): kind for m in decoder.modules() if (kind := norm_kind(m)) is not None}
        feeding = _feeding_linears(base, [m for m in decoder.modules() if id(m) in kinds])
        for name, module in base.named_modules():
            if not name.startswith(decoder_prefix):
                continue
            if isinstance(module, torch.nn.Linear) and not module.weight.requires_grad:
                if module.weight.dtype != dtype:
                    # PEFT names the wrapped layer `<name>.base_layer`; the checkpoint knows it as <name>.
                    self.frozen[name.replace(".base_layer", "") + ".weight"] = module
                    module.weight.data = module.weight.data.to(dtype)
            elif id(module) in feeding and kinds[id(module)] == "llama":
                # Decided once here, not per call (on CUDA every check would be a host sync).
                module.lean_divide = not module.weight.requires_grad and bool((module.weight != 0).all())
                self.norms.append((module, type(module)))
                module.__class__ = with_mixin("Lean", _LeanNorm, type(module))
            elif id(module) in feeding:
                self.hooks.append(module.register_forward_hook(self._cast_output))
            if hasattr(module, "cast_input_dtype_enabled"):
                module.cast_input_dtype_enabled = False
                self.peft_layers.append(module)
        # from_pretrained memory-maps the checkpoint; every page a cast read stays resident until no
        # tensor uses the map, so the tensors kept as they are get their own copy. With nothing cast
        # (a float32 run) the map is the weights' only copy and stays.
        cast = {id(m.weight) for m in self.frozen.values()}
        for param in base.parameters() if cast else ():
            if id(param) not in cast:
                param.data = param.data.clone()

    def _cast_output(self, module, args, output: torch.Tensor) -> torch.Tensor:
        if torch.is_autocast_enabled(output.device.type):
            return output.to(self.dtype)
        return output

    def restore(self, model_path: str) -> None:
        """Put the original float32 frozen weights back and undo the casts."""
        original = _read_weights(Path(model_path), set(self.frozen)) if self.frozen else {}
        for key, module in self.frozen.items():
            module.weight.data = original.pop(key)
        for hook in self.hooks:
            hook.remove()
        for norm, cls in self.norms:
            norm.__class__ = cls
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
