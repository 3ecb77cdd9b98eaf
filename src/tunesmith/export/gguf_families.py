"""One row per model family GGUF export knows: llama.cpp's architecture and how its graph differs.

What each row says is what llama.cpp's own converter (convert_hf_to_gguf.py) does for that family:
- `interleaved_rope`: llama.cpp's Llama graph rotates interleaved pairs of each head's dimensions,
  Hugging Face rotates the two halves, so Q and K rows are reordered; the other families run
  llama.cpp's NeoX rotation, which is Hugging Face's, and keep their rows.
- `norm_shift`: Gemma's RMSNorm multiplies by (1 + w) where llama.cpp multiplies by the stored
  weight, so every norm weight is stored plus one.
- `hyperparameters`: the family's own keys beyond the shared ones (soft-caps, sliding windows,
  local rope base, partial rotary dimensions).
- `check`: what llama.cpp's graph for the architecture hard-codes, checked against the config, so a
  model it would run differently is refused instead of exported wrong.
Tensor names come from gguf's own map for the architecture (fused qkv and gate_up for Phi-3 map
to llama.cpp's fused tensors as they are).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tunesmith.errors import TunesmithError


@dataclass(frozen=True)
class Shape:
    layers: int
    heads: int
    kv_heads: int
    head_dim: int

    @classmethod
    def of(cls, config) -> Shape:
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return cls(config.num_hidden_layers, heads, getattr(config, "num_key_value_heads", None) or heads, head_dim)


def rope(config, layer_type: str = "full_attention") -> dict:
    """The rope settings of one kind of layer (Gemma 3 keeps one set per layer type)."""
    # transformers 5 keeps rope settings in rope_parameters; older configs in rope_theta/rope_scaling.
    params = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    params = dict(params.get(layer_type, params))
    params.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    params["rope_type"] = params.get("rope_type") or params.get("type") or "default"
    return params


def _layer_pattern(config, source: str, every: int) -> None:
    """llama.cpp's Gemma graphs fix which layers attend locally: all but every `every`-th."""
    expected = ["sliding_attention" if (i + 1) % every else "full_attention" for i in range(config.num_hidden_layers)]
    if list(config.layer_types) != expected:
        raise TunesmithError(
            f"{source}: llama.cpp runs {config.model_type} with one global layer in every {every}, the others "
            f"sliding-window; this model's layer_types are {config.layer_types}"
        )


def _query_scale(config, source: str, big_layers: int) -> None:
    """llama.cpp's Gemma graphs scale queries by 1/sqrt(head_dim), or 1/sqrt(hidden/heads) for the
    27B model (recognised by its layer count): query_pre_attn_scalar must be that number."""
    shape = Shape.of(config)
    expected = config.hidden_size // shape.heads if shape.layers == big_layers else shape.head_dim
    if config.query_pre_attn_scalar != expected:
        raise TunesmithError(
            f"{source}: llama.cpp scales {config.model_type} queries by 1/sqrt({expected}); this model's "
            f"query_pre_attn_scalar is {config.query_pre_attn_scalar}"
        )


def _no_check(config, source: str) -> None:
    pass


def _check_llama(config, source: str) -> None:
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise TunesmithError(f"{source}: GGUF export of Llama models with attention or MLP biases is not supported")


def _check_qwen2(config, source: str) -> None:
    if getattr(config, "use_sliding_window", False):
        raise TunesmithError(f"{source}: llama.cpp's qwen2 has no sliding window; this model uses one")


def _check_gemma2(config, source: str) -> None:
    _layer_pattern(config, source, 2)
    _query_scale(config, source, big_layers=46)


def _check_gemma3(config, source: str) -> None:
    _layer_pattern(config, source, 6)
    _query_scale(config, source, big_layers=62)


def _no_extras(writer, config, shape: Shape) -> None:
    pass


def _full_context(config) -> int:
    return config.max_position_embeddings


def _window_context(config) -> int:
    # llama.cpp's llama graph attends to the whole context: a model trained with a shorter sliding
    # window (Mistral 7B v0.1) is exact only up to the window, so that is the context it declares.
    window = getattr(config, "sliding_window", None) or config.max_position_embeddings
    return min(window, config.max_position_embeddings)


def _gemma2(writer, config, shape: Shape) -> None:
    if config.attn_logit_softcapping is not None:
        writer.add_attn_logit_softcapping(float(config.attn_logit_softcapping))
    if config.final_logit_softcapping is not None:
        writer.add_final_logit_softcapping(float(config.final_logit_softcapping))
    writer.add_sliding_window(config.sliding_window)


def _gemma3(writer, config, shape: Shape) -> None:
    if getattr(config, "final_logit_softcapping", None) is not None:
        writer.add_final_logit_softcapping(float(config.final_logit_softcapping))
    writer.add_sliding_window(config.sliding_window)
    writer.add_rope_freq_base_swa(float(rope(config, "sliding_attention")["rope_theta"]))


def _phi3(writer, config, shape: Shape) -> None:
    rotary = int(shape.head_dim * getattr(config, "partial_rotary_factor", 1.0))
    writer.add_rope_dimension_count(rotary)
    if getattr(config, "sliding_window", None):
        writer.add_sliding_window(config.sliding_window)


@dataclass(frozen=True)
class Family:
    arch: str  # llama.cpp's architecture name (gguf.MODEL_ARCH_NAMES)
    interleaved_rope: bool
    norm_shift: float
    hyperparameters: Callable = _no_extras
    check: Callable = _no_check
    context_length: Callable = _full_context


FAMILIES = {
    "llama": Family("llama", interleaved_rope=True, norm_shift=0.0, check=_check_llama),
    "mistral": Family(
        "llama", interleaved_rope=True, norm_shift=0.0, check=_check_llama, context_length=_window_context
    ),
    "qwen2": Family("qwen2", interleaved_rope=False, norm_shift=0.0, check=_check_qwen2),
    "qwen3": Family("qwen3", interleaved_rope=False, norm_shift=0.0),
    "gemma2": Family("gemma2", interleaved_rope=False, norm_shift=1.0, hyperparameters=_gemma2, check=_check_gemma2),
    "gemma3_text": Family(
        "gemma3", interleaved_rope=False, norm_shift=1.0, hyperparameters=_gemma3, check=_check_gemma3
    ),
    "phi3": Family("phi3", interleaved_rope=False, norm_shift=0.0, hyperparameters=_phi3),
}
SUPPORTED_TEXT = (
    f"model types {', '.join(FAMILIES)} (Llama 2/3, SmolLM, TinyLlama, Mistral, Qwen 2/2.5/3, Gemma 2, "
    "Gemma 3 text, Phi-3)"
)
ROPE_TYPES = ("default", "linear", "llama3")


def family_of(config, source: str) -> Family:
    """The family row for this config, after its checks; a clear refusal for anything else."""
    model_type = getattr(config, "model_type", None)
    family = FAMILIES.get(model_type)
    if family is None:
        raise TunesmithError(
            f"{source}: GGUF export supports {SUPPORTED_TEXT}; this model is {model_type!r} "
            f"({', '.join(getattr(config, 'architectures', None) or ['unknown architecture'])})"
        )
    family.check(config, source)
    rope_type = rope(config)["rope_type"]
    if rope_type not in ROPE_TYPES:
        raise TunesmithError(
            f"{source}: GGUF export supports rope types {', '.join(ROPE_TYPES)}; this model uses {rope_type!r}"
        )
    return family
