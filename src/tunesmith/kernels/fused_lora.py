"""LoRA layers and the LoRA SwiGLU MLP as single autograd functions, with hand-written backward.

PEFT computes a LoRA layer as `base(x) + lora_B(lora_A(dropout(x))) * scaling`: under autocast
that is two weight casts, five operations and as many autograd nodes per layer, 210 layers in
SmolLM2-135M, each paying eager-mode overhead forward and backward. Here one layer is one node
whose backward is four matmuls. In the MLP, autograd would also keep silu(gate) and the gated
product (the down projection's input) for backward: two [tokens, intermediate] tensors per layer,
a quarter of all activations. `_LoRAMLP` keeps the gate and up projections only and recomputes
the rest in backward, where it costs two elementwise operations.

Same arithmetic, same parameters: the PEFT modules, their weights and their state dicts are
untouched, only their forward is replaced (each module's class becomes a Fused subclass of its
own, which print(model) shows). A layer that is not plain LoRA (dropout, DoRA and other variants,
several adapters, merged or disabled adapters, a trained bias) keeps PEFT's own forward.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from tunesmith.kernels import with_mixin
from tunesmith.precision import active_dtype


def _plain_lora(layer) -> str | None:
    """The adapter name if `layer` is a PEFT LoRA linear running plain LoRA now, else None."""
    from peft.tuners.lora import Linear

    if not isinstance(layer, Linear) or layer.merged or layer.disable_adapters:
        return None
    if len(layer.active_adapters) != 1:
        return None
    name = layer.active_adapters[0]
    base = layer.base_layer
    if name not in layer.lora_A or name in layer.lora_variant or not isinstance(base, torch.nn.Linear):
        return None
    if not isinstance(layer.lora_dropout[name], torch.nn.Identity) or base.weight.requires_grad:
        return None
    if base.bias is not None and base.bias.requires_grad:
        return None
    return name


def _operands(layer, name: str) -> tuple:
    """(weight, bias, A, B) of a plain LoRA layer."""
    return layer.base_layer.weight, layer.base_layer.bias, layer.lora_A[name].weight, layer.lora_B[name].weight


def _cast(operands, dtype: torch.dtype) -> list:
    """As autocast would: every weight in the compute dtype."""
    return [None if t is None else t.to(dtype) for t in operands]


def _forward(x, weight, bias, a, b, scaling: float):
    """(x W^T + bias + scaling * (x A^T) B^T, x A^T) for a 2-D x."""
    xa = x @ a.t()
    out = x @ weight.t() if bias is None else torch.addmm(bias, x, weight.t())
    return out.addmm_(xa, b.t(), alpha=scaling), xa


def _backward(grad, x, xa, weight, a, b, scaling: float, need_x: bool):
    """(grad of x or None, grad of A, grad of B) of `_forward`."""
    grad_xa = (grad @ b).mul_(scaling)
    grad_b = (grad.t() @ xa).mul_(scaling)
    grad_a = grad_xa.t() @ x
    grad_x = (grad @ weight).addmm_(grad_xa, a) if need_x else None
    return grad_x, grad_a, grad_b


class _LoRALinear(torch.autograd.Function):
    """One plain LoRA layer; `scaling` and `dtype` are plain values, the rest tensors (bias may be
    None). The A and B gradients come back in the compute dtype; autograd casts them to the
    parameters' float32, as it does behind autocast's own casts."""

    @staticmethod
    def forward(ctx, x, weight, bias, a, b, scaling: float, dtype: torch.dtype):
        x, weight, bias, a, b = _cast((x, weight, bias, a, b), dtype)
        out, xa = _forward(x, weight, bias, a, b, scaling)
        ctx.save_for_backward(x, xa, weight, a, b)
        ctx.scaling = scaling
        return out

    @staticmethod
    def backward(ctx, grad):
        x, xa, weight, a, b = ctx.saved_tensors
        grad_x, grad_a, grad_b = _backward(grad, x, xa, weight, a, b, ctx.scaling, ctx.needs_input_grad[0])
        return grad_x, None, None, grad_a, grad_b, None, None


# The gated MLPs' activations (SwiGLU: Llama, Qwen, Mistral; GeGLU: Gemma), with their backward.
ACTIVATIONS = {
    "silu": (F.silu, lambda grad, g: torch.ops.aten.silu_backward.grad_input(grad, g, grad_input=grad)),
    "gelu_tanh": (
        functools.partial(F.gelu, approximate="tanh"),
        lambda grad, g: torch.ops.aten.gelu_backward.grad_input(grad, g, approximate="tanh", grad_input=grad),
    ),
}


class _LoRAMLP(torch.autograd.Function):
    """down(act(gate(x)) * up(x)), LoRA on all three: `operands` are the 4 tensors of each
    projection (as `_operands`), then the three scalings, the compute dtype and the activation's
    name in ACTIVATIONS."""

    @staticmethod
    def forward(ctx, x, *operands):
        *tensors, s_gate, s_up, s_down, dtype, activation = operands
        x, *tensors = _cast((x, *tensors), dtype)
        gate, up, down = tensors[0:4], tensors[4:8], tensors[8:12]
        g, xa_gate = _forward(x, *gate, s_gate)
        u, xa_up = _forward(x, *up, s_up)
        out, xa_down = _forward(ACTIVATIONS[activation][0](g).mul_(u), *down, s_down)
        ctx.save_for_backward(x, g, u, xa_gate, xa_up, xa_down, *tensors)
        ctx.scalings, ctx.activation = (s_gate, s_up, s_down), activation
        return out

    @staticmethod
    def backward(ctx, grad):
        x, g, u, xa_gate, xa_up, xa_down, *tensors = ctx.saved_tensors
        (w_gate, _, a_gate, b_gate), (w_up, _, a_up, b_up), (w_down, _, a_down, b_down) = (
            tensors[0:4],
            tensors[4:8],
            tensors[8:12],
        )
        s_gate, s_up, s_down = ctx.scalings
        # In place where a [tokens, intermediate] tensor is not read again: each new one is a few MB
        # that glibc maps and the kernel zero-fills page by page (kernels/arena.py pins the threshold).
        activation, activation_backward = ACTIVATIONS[ctx.activation]
        act = activation(g)
        grad_h, grad_a_down, grad_b_down = _backward(grad, act * u, xa_down, w_down, a_down, b_down, s_down, True)
        grad_u = act.mul_(grad_h)
        grad_g = activation_backward(grad_h.mul_(u), g)
        need_x = ctx.needs_input_grad[0]
        grad_x, grad_a_gate, grad_b_gate = _backward(grad_g, x, xa_gate, w_gate, a_gate, b_gate, s_gate, need_x)
        grad_x_up, grad_a_up, grad_b_up = _backward(grad_u, x, xa_up, w_up, a_up, b_up, s_up, need_x)
        if need_x:
            grad_x += grad_x_up
        return (
            grad_x,
            *(None, None, grad_a_gate, grad_b_gate),
            *(None, None, grad_a_up, grad_b_up),
            *(None, None, grad_a_down, grad_b_down),
            None,
            None,
            None,
            None,
            None,
        )


class _FusedLinear:
    """Mixed into a PEFT LoRA Linear's class: its forward runs `_LoRALinear` while it is plain LoRA."""

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        name = _plain_lora(self)
        if name is None or args or kwargs:
            return super().forward(x, *args, **kwargs)
        flat = x.reshape(-1, x.shape[-1])
        out = _LoRALinear.apply(flat, *_operands(self, name), self.scaling[name], active_dtype(x))
        return out.view(*x.shape[:-1], out.shape[-1])


class _FusedMLP:
    """Mixed into a gated MLP's class: its forward runs `_LoRAMLP` while all three projections are plain LoRA."""

    fused_activation: str

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        projections = (self.gate_proj, self.up_proj, self.down_proj)
        names = [_plain_lora(p) for p in projections]
        if None in names:
            return super().forward(x)
        tensors = [t for p, n in zip(projections, names, strict=True) for t in _operands(p, n)]
        scalings = [p.scaling[n] for p, n in zip(projections, names, strict=True)]
        flat = x.reshape(-1, x.shape[-1])
        out = _LoRAMLP.apply(flat, *tensors, *scalings, active_dtype(x), self.fused_activation)
        return out.view(*x.shape[:-1], out.shape[-1])


@torch.no_grad()
def gated_activation(module) -> str | None:
    """The ACTIVATIONS name of a gated MLP (gate_proj, up_proj, down_proj, act_fn: transformers'
    down(act(gate(x)) * up(x))) whose act_fn computes it, told by its values on a probe, not by its
    class; None for anything else (Phi-3's fused gate_up_proj is not one: its projections are fused
    one by one)."""
    if not all(hasattr(module, p) for p in ("gate_proj", "up_proj", "down_proj", "act_fn")):
        return None
    probe = torch.linspace(-6, 6, 97)
    for name, (function, _) in ACTIVATIONS.items():
        if torch.allclose(module.act_fn(probe), function(probe), rtol=1e-6, atol=1e-7):
            return name
    return None


def fuse_lora(model: torch.nn.Module) -> int:
    """Route every LoRA layer and LoRA gated MLP of `model` through the functions above (their class
    becomes Fused<class>); returns how many modules now do. Each checks on every call that it is
    still plain LoRA."""
    from peft.tuners.lora import Linear

    projections = ("gate_proj", "up_proj", "down_proj")
    in_mlp: set[int] = set()
    fused = 0
    for module in model.modules():
        activation = gated_activation(module)
        if activation and all(isinstance(getattr(module, p), Linear) for p in projections):
            module.fused_activation = activation
            module.__class__ = with_mixin("Fused", _FusedMLP, type(module))
            in_mlp.update(id(getattr(module, p)) for p in projections)
            fused += 1
    for module in model.modules():
        if isinstance(module, Linear) and id(module) not in in_mlp:
            module.__class__ = with_mixin("Fused", _FusedLinear, type(module))
            fused += 1
    return fused
