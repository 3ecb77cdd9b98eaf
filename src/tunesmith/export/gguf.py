"""GGUF files for llama.cpp, Ollama and LM Studio, written with the `gguf` package: no llama.cpp build.

One writer for every family in export/gguf_families.py (Llama, Mistral, Qwen 2/3, Gemma 2/3, Phi-3):
the family's row says llama.cpp's architecture, which tensors change layout (Llama's interleaved rope
rows, Gemma's norms stored as 1 + w) and its own hyperparameters; every tensor goes in under the name
gguf's map gives it for that architecture. The vocabulary and chat template go in as metadata
(export/gguf_vocab.py).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tunesmith.errors import TunesmithError
from tunesmith.export.gguf_families import Family, Shape, family_of
from tunesmith.export.gguf_families import rope as family_rope
from tunesmith.paths import atomic_path
from tunesmith.progress import tracked


@dataclass(frozen=True)
class OutType:
    matrices: str  # GGMLQuantizationType name for 2-D weights; vectors (norms) always stay F32
    file_type: str  # LlamaFileType name, what llama.cpp reports as the file's type


OUTTYPES = {
    "f32": OutType("F32", "ALL_F32"),
    "f16": OutType("F16", "MOSTLY_F16"),
    "bf16": OutType("BF16", "MOSTLY_BF16"),
    "q8_0": OutType("Q8_0", "MOSTLY_Q8_0"),
}


def _interleave_rope_rows(weight: np.ndarray, heads: int) -> np.ndarray:
    """Per head, rows (first half, second half) -> (pair 0, pair 1, ...), llama.cpp's rotary order."""
    return (
        weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
    )


def llama3_rope_factors(rope: dict, head_dim: int) -> np.ndarray:
    """Llama 3.1's frequency-dependent rope scaling as the per-frequency divisors llama.cpp reads
    from `rope_freqs.weight` (it has no other way to express it)."""
    base, factor = rope["rope_theta"], rope["factor"]
    low, high = rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    old_context = rope.get("original_max_position_embeddings", 8192)
    factors = []
    for i in range(0, head_dim, 2):
        wavelength = 2 * math.pi * base ** (i / head_dim)
        if wavelength < old_context / high:
            factors.append(1.0)
        elif wavelength > old_context / low:
            factors.append(factor)
        else:
            smooth = (old_context / wavelength - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(factors, dtype=np.float32)


def _writer(name: str, arch: str):
    import gguf

    # use_temp_file: tensors go to a spooled file as they are added, so memory holds one at a time.
    writer = gguf.GGUFWriter(path=None, arch=arch, use_temp_file=True)
    writer.add_name(name)
    return writer


def _add_tensor(writer, name: str, array: np.ndarray, outtype: str) -> None:
    """Vectors stay F32 (as llama.cpp keeps norms); matrices take the requested type. A row length
    Q8_0's 32-value blocks cannot tile falls back to F16, llama.cpp's own fallback."""
    from gguf import GGMLQuantizationType, quants

    array = np.ascontiguousarray(array, dtype=np.float32)
    qtype = GGMLQuantizationType[OUTTYPES[outtype].matrices] if array.ndim > 1 else GGMLQuantizationType.F32
    if qtype == GGMLQuantizationType.Q8_0 and array.shape[-1] % 32:
        qtype = GGMLQuantizationType.F16
    if qtype == GGMLQuantizationType.F32:
        writer.add_tensor(name, array)
    elif qtype == GGMLQuantizationType.F16:
        writer.add_tensor(name, array.astype(np.float16))
    else:
        writer.add_tensor(name, quants.quantize(array, qtype), raw_dtype=qtype)


def _save(writer, out: Path) -> Path:
    with atomic_path(out) as tmp:
        writer.write_header_to_file(path=tmp)
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        # A file to hand to other programs (an ollama daemon, a web server): readable, unlike a temp file.
        tmp.chmod(0o644)
    return out


def _safetensors(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise TunesmithError(f"{folder}: no .safetensors weights to export")
    return files


def _gguf_name(name_map, hf_name: str) -> str:
    name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
    if name is None:
        raise TunesmithError(f"GGUF export: no llama.cpp name for tensor {hf_name!r}")
    return name


def _tensor_name_map(family: Family, layers: int):
    import gguf

    arch = next(key for key, name in gguf.MODEL_ARCH_NAMES.items() if name == family.arch)
    return gguf.get_tensor_name_map(arch, layers)


def _to_gguf_layout(hf_name: str, array: np.ndarray, family: Family, shape: Shape) -> np.ndarray:
    if family.interleaved_rope and hf_name.endswith("q_proj.weight"):
        return _interleave_rope_rows(array, shape.heads)
    if family.interleaved_rope and hf_name.endswith("k_proj.weight"):
        return _interleave_rope_rows(array, shape.kv_heads)
    if family.norm_shift and hf_name.endswith("norm.weight"):
        return array + family.norm_shift
    return array


def _add_hyperparameters(writer, config, family: Family, shape: Shape, outtype: str) -> None:
    import gguf

    rope = family_rope(config)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_context_length(family.context_length(config))
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(shape.layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(shape.heads)
    writer.add_head_count_kv(shape.kv_heads)
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    if family.arch == "llama":
        writer.add_rope_dimension_count(shape.head_dim)
    writer.add_vocab_size(config.vocab_size)
    if shape.head_dim != config.hidden_size // shape.heads:
        writer.add_key_length(shape.head_dim)
        writer.add_value_length(shape.head_dim)
    if rope["rope_type"] == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    writer.add_file_type(gguf.LlamaFileType[OUTTYPES[outtype].file_type])
    family.hyperparameters(writer, config, shape)


def _check_outtype(outtype: str, allowed) -> None:
    if outtype not in allowed:
        raise TunesmithError(f"--outtype {outtype!r}: choose one of {', '.join(allowed)}")


def write_model_gguf(folder: Path, out: Path, outtype: str, name: str) -> Path:
    """The HF model in `folder` (weights, config, tokenizer) as one GGUF file at `out`."""
    from safetensors import safe_open
    from transformers import AutoConfig, AutoTokenizer

    from tunesmith.export.gguf_vocab import add_tokenizer

    _check_outtype(outtype, OUTTYPES)
    config = AutoConfig.from_pretrained(folder)
    family = family_of(config, str(folder))
    shape = Shape.of(config)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    writer = _writer(name, family.arch)
    _add_hyperparameters(writer, config, family, shape, outtype)
    add_tokenizer(writer, folder, tokenizer, config.vocab_size)

    name_map = _tensor_name_map(family, shape.layers)
    rope = family_rope(config)
    if rope["rope_type"] == "llama3":
        writer.add_tensor("rope_freqs.weight", llama3_rope_factors(rope, shape.head_dim))
    for path in _safetensors(folder):
        with safe_open(path, "pt") as weights:
            names = [n for n in weights.keys() if not (config.tie_word_embeddings and n == "lm_head.weight")]
            for hf_name in tracked(names, f"gguf {outtype}: {path.name}"):
                array = weights.get_tensor(hf_name).float().numpy()
                array = _to_gguf_layout(hf_name, array, family, shape)
                _add_tensor(writer, _gguf_name(name_map, hf_name), array, outtype)
    return _save(writer, out)


LORA_OUTTYPES = ("f32", "f16", "bf16")


def write_lora_gguf(adapter: Path, config_folder: Path, out: Path, outtype: str, name: str) -> Path:
    """A PEFT LoRA adapter as llama.cpp's GGUF LoRA (`llama-cli -m base.gguf --lora this.gguf`).

    Each adapted weight W gets `<name>.lora_a` (rank x in) and `<name>.lora_b` (out x rank), and the
    runtime adds (alpha / rank) * B @ A. Q and K's B take the same row order as their base weights,
    since the update adds to those rows.
    """
    from safetensors.torch import load_file
    from transformers import AutoConfig

    _check_outtype(outtype, LORA_OUTTYPES)
    config = AutoConfig.from_pretrained(config_folder)
    family = family_of(config, str(config_folder))
    shape = Shape.of(config)
    settings = json.loads((adapter / "adapter_config.json").read_text())
    if settings.get("use_dora"):
        raise TunesmithError(f"{adapter}: a DoRA adapter has no GGUF LoRA form; export the merged model instead")
    if settings.get("alpha_pattern") or settings.get("modules_to_save"):
        raise TunesmithError(
            f"{adapter}: per-module alphas or fully trained modules do not fit a GGUF LoRA; export the merged model"
        )
    rank, alpha = settings["r"], float(settings["lora_alpha"])
    # llama.cpp scales by alpha / rank; rsLoRA's alpha / sqrt(rank) is the same with a larger alpha.
    if settings.get("use_rslora"):
        alpha *= math.sqrt(rank)

    import gguf

    writer = _writer(name, family.arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    name_map = _tensor_name_map(family, shape.layers)
    state = load_file(adapter / "adapter_model.safetensors")
    pairs = sorted({key.rsplit(".lora_", 1)[0] for key in state if ".lora_" in key})
    if not pairs:
        raise TunesmithError(f"{adapter}: no LoRA weights in adapter_model.safetensors")
    for module in pairs:
        # PEFT's keys: base_model.model.<module path>.lora_A.weight
        hf_name = module.removeprefix("base_model.model.") + ".weight"
        target = _gguf_name(name_map, hf_name)
        lora_a = state[f"{module}.lora_A.weight"].float().numpy()
        lora_b = _to_gguf_layout(hf_name, state[f"{module}.lora_B.weight"].float().numpy(), family, shape)
        _add_tensor(writer, f"{target}.lora_a", lora_a, outtype)
        _add_tensor(writer, f"{target}.lora_b", lora_b, outtype)
    return _save(writer, out)
