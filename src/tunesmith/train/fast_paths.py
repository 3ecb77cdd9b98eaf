"""Which fast paths (kernels/) a run uses on its model, and why any steps aside: said once in the log
and in summary.json as `fast_paths_used` ({path: "on" | "on: <how>" | "off: <reason>"}).

Read from the model as set up, not from its class name: what the kernels did to its modules, and
the config fields that change the arithmetic (sliding windows, soft-caps).
"""

from __future__ import annotations

from tunesmith.config import Config
from tunesmith.kernels.label_loss import output_layer
from tunesmith.kernels.lean import LeanStorage
from tunesmith.kernels.token_rows import added_rows
from tunesmith.train.loss import final_softcap
from tunesmith.train.vocab_shard import splits_vocabulary

OFF = "off: train.fast_paths is false"


def _attention_features(config) -> list[str]:
    features = []
    layer_types = getattr(config, "layer_types", None)
    window = getattr(config, "sliding_window", None)
    if window is not None and (layer_types is None or "sliding_attention" in layer_types):
        features.append(f"sliding window {window}")
    if getattr(config, "attn_logit_softcapping", None) is not None:
        features.append("soft-capped scores")
    return features


def _attention(cfg: Config, config) -> str:
    if not cfg.train.fast_paths:
        return OFF
    if not cfg.data.packing:
        return "off: data.packing is false (padded batches run transformers' SDPA)"
    features = _attention_features(config)
    return f"on: per-example eager attention for the {' and '.join(features)}" if features else "on"


def _fused_lora(cfg: Config, model) -> str:
    if not cfg.method.lora:
        return "off: full fine-tuning"
    if not cfg.train.fast_paths:
        return OFF
    names = [type(m).__name__ for m in model.modules() if type(m).__name__.startswith("Fused")]
    mlps = {m.fused_activation for m in model.modules() if hasattr(m, "fused_activation")}
    if mlps:
        return f"on: {len(names) - len(mlps)} layers, gated MLPs ({', '.join(sorted(mlps))}) as one function each"
    return f"on: {len(names)} layers one by one (no gate_proj/up_proj/down_proj MLP to fuse whole)"


def _lean(cfg: Config, lean: LeanStorage | None) -> str:
    if not cfg.method.lora:
        return "off: full fine-tuning"
    if lean is None:
        return OFF
    return f"on: {len(lean.norms)} norms in one node, {len(lean.hooks)} cast at the output"


def _arena(cfg: Config, arena: bool, device) -> str:
    if arena:
        return "on"
    if not cfg.train.fast_paths:
        return OFF
    if device.type != "cpu":
        return "off: CUDA has its own caching allocator"
    if not cfg.method.lora:
        return "off: full fine-tuning (autocast keeps its weight copies anyway)"
    if cfg.train.compile:
        return "off: torch.compile plans its own buffers"
    return "off: the C library is not glibc"


def _vocab_split(cfg: Config, model, strategy: str, world_size: int) -> str:
    if world_size == 1 or strategy != "fsdp2":
        return "off: not FSDP2 on several processes"
    if not cfg.train.fast_paths:
        return OFF
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    embedding, head = base.get_input_embeddings(), output_layer(model)[1]
    if head.weight is not embedding.weight:
        return "off: the output layer is untied (it stays in FSDP2's root unit)"
    if not splits_vocabulary(embedding):
        return "off: the input embedding computes more than a lookup (Gemma scales it)"
    return "on"


def _token_rows(cfg: Config, model) -> str | None:
    """What happens to the token rows the config added (trained under LoRA); None when it added none."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    rows = added_rows(base.get_input_embeddings())
    if rows is None:
        return None
    if not cfg.train.fast_paths:
        return OFF
    return f"on: {len(rows.index)} added rows trained beside the {rows.table.shape[0]:,}-row table, not in a copy of it"


def fast_paths_used(
    cfg: Config, model, lean: LeanStorage | None, arena: bool, device, strategy: str, world_size: int
) -> dict[str, str]:
    """{fast path: "on..." | "off: <reason>"} for this run's model as the recipe set it up."""
    config = output_layer(model)[0].config
    softcap = final_softcap(model)
    used = {
        "packed_attention": _attention(cfg, config),
        "label_only_loss": (OFF if not cfg.train.fast_paths else "on" if softcap is None else "on: final soft-cap"),
        "fused_lora": _fused_lora(cfg, model),
        "lean_storage": _lean(cfg, lean),
        "activation_arena": _arena(cfg, arena, device),
        "vocab_split": _vocab_split(cfg, model, strategy, world_size),
    }
    rows = _token_rows(cfg, model)
    if rows:
        used["token_rows"] = rows
    if cfg.method.name in ("dpo", "grpo"):
        # A DPO pair's two answers, or a GRPO group's, run their prompt once.
        shared = "on" if cfg.data.packing and cfg.train.fast_paths else "off: data.packing is false"
        used[f"{cfg.method.name}_shared_prompt"] = shared
    return used


def describe(used: dict[str, str]) -> str:
    """The log line."""
    return "fast paths: " + "; ".join(f"{path} {state}" for path, state in used.items())
