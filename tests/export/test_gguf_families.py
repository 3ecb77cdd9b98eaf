"""GGUF export of every family: a tiny random model of each, read back by transformers' GGUF loader,
gives the same logits; the file carries llama.cpp's architecture, tensor names and family keys."""

import copy

import gguf
import pytest
import torch
import transformers
from gguf_checks import load_gguf

from tunesmith.errors import TunesmithError
from tunesmith.export.gguf import write_lora_gguf, write_model_gguf

SMALL = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "max_position_embeddings": 512}
# Head dims and query scales are the config defaults transformers' GGUF loader falls back to (it
# reads no head_dim for qwen3, no query_pre_attn_scalar or soft-caps for Gemma); sliding windows
# shorter than the 64 compared tokens, so a window the file lost would change the logits.
FAMILY_CONFIGS = {
    "llama": ("LlamaConfig", {"num_attention_heads": 4, "num_key_value_heads": 2}),
    "mistral": ("MistralConfig", {"num_attention_heads": 4, "num_key_value_heads": 2, "sliding_window": None}),
    "qwen2": ("Qwen2Config", {"num_attention_heads": 4, "num_key_value_heads": 2}),
    "qwen3": ("Qwen3Config", {"num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 128}),
    "gemma2": ("Gemma2Config", {"num_attention_heads": 2, "num_key_value_heads": 1, "sliding_window": 8}),
    "gemma3_text": (
        "Gemma3TextConfig",
        {"num_attention_heads": 2, "num_key_value_heads": 1, "sliding_window": 8, "num_hidden_layers": 6},
    ),
    "phi3": ("Phi3Config", {"num_attention_heads": 4, "num_key_value_heads": 2, "pad_token_id": 0}),
}
# model type, llama.cpp architecture, tensors only that family has, family keys (without the arch prefix)
FAMILIES = [
    ("llama", "llama", ["blk.0.ffn_gate.weight"], {"rope.dimension_count": 16}),
    ("mistral", "llama", ["blk.0.ffn_gate.weight"], {"context_length": 512}),
    ("qwen2", "qwen2", ["blk.0.attn_q.bias", "blk.1.attn_v.bias"], {}),
    ("qwen3", "qwen3", ["blk.0.attn_q_norm.weight", "blk.1.attn_k_norm.weight"], {"attention.key_length": 128}),
    (
        "gemma2",
        "gemma2",
        ["blk.0.post_attention_norm.weight", "blk.1.post_ffw_norm.weight", "blk.0.ffn_norm.weight"],
        {"attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0, "attention.sliding_window": 8},
    ),
    (
        "gemma3_text",
        "gemma3",
        ["blk.5.attn_q_norm.weight", "blk.0.post_ffw_norm.weight"],
        {"attention.sliding_window": 8, "rope.freq_base": 1e6, "rope.freq_base_swa": 1e4},
    ),
    ("phi3", "phi3", ["blk.0.attn_qkv.weight", "blk.1.ffn_up.weight"], {"rope.dimension_count": 16}),
]


def tiny_family_model(model_type: str, tokenizer, folder, **change):
    """A random model of the family with the tokenizer's vocabulary, saved to `folder`."""
    config_class, settings = FAMILY_CONFIGS[model_type]
    config = getattr(transformers, config_class)(vocab_size=len(tokenizer), **{**SMALL, **settings, **change})
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # norms start at exactly 1 (or 0 for Gemma): perturb them so a lost +1 shows
        for name, parameter in model.named_parameters():
            if "norm" in name or name.endswith(".bias"):
                parameter.add_(0.1 * torch.randn_like(parameter))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model


@pytest.fixture(scope="module")
def exported(byte_level_tokenizer, tmp_path_factory):
    """model type -> (the HF model, its f32 GGUF), built once per family."""
    cache = {}

    def export(model_type: str):
        if model_type not in cache:
            folder = tmp_path_factory.mktemp(model_type)
            model = tiny_family_model(model_type, byte_level_tokenizer, folder)
            cache[model_type] = model, write_model_gguf(folder, folder / "model.gguf", "f32", f"tiny-{model_type}")
        return cache[model_type]

    return export


@pytest.mark.parametrize("model_type", list(FAMILY_CONFIGS))
def test_every_family_round_trips_through_transformers_gguf_loader(exported, byte_level_tokenizer, model_type):
    reference, path = exported(model_type)
    model = load_gguf(path)
    assert type(model).__name__ == type(reference).__name__ or model_type == "mistral"
    ids = torch.tensor([byte_level_tokenizer("The Eagle is a coffee shop near Burger King. " * 8).input_ids[:64]])
    with torch.no_grad():
        difference = (model(input_ids=ids).logits - reference(input_ids=ids).logits).abs().max().item()
    assert difference <= 1e-4


@pytest.mark.parametrize(("model_type", "arch", "tensors", "keys"), FAMILIES)
def test_file_carries_llama_cpp_architecture_tensor_names_and_family_keys(exported, model_type, arch, tensors, keys):
    reference, path = exported(model_type)
    reader = gguf.GGUFReader(path)
    assert reader.fields["general.architecture"].contents() == arch
    for key, value in keys.items():
        assert reader.fields[f"{arch}.{key}"].contents() == pytest.approx(value), key
    names = {t.name: t for t in reader.tensors}
    assert set(tensors) <= set(names)
    expected = gguf.MODEL_TENSORS[next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)]
    allowed = {gguf.TENSOR_NAMES[t].format(bid=b) + s for t in expected for b in range(6) for s in (".weight", ".bias")}
    assert set(names) <= allowed
    assert len(names) == len(list(reference.named_parameters()))  # tied heads are one parameter and one tensor


def test_gemma_norms_are_stored_as_one_plus_weight(exported):
    reference, path = exported("gemma2")
    stored = {t.name: t.data for t in gguf.GGUFReader(path).tensors}["blk.0.attn_norm.weight"]
    expected = reference.model.layers[0].input_layernorm.weight.detach().numpy() + 1
    assert torch.allclose(torch.from_numpy(stored.copy()), torch.from_numpy(expected))


# what the config says, what llama.cpp's graph would do instead
REFUSED = [
    ("gemma2", {"query_pre_attn_scalar": 128}, r"queries by 1/sqrt\(256\); .*query_pre_attn_scalar is 128"),
    (
        "gemma2",
        {"layer_types": ["full_attention", "full_attention"]},
        r"one global layer in every 2, the others sliding-window; .*\['full_attention', 'full_attention'\]",
    ),
    ("qwen2", {"use_sliding_window": True}, r"llama.cpp's qwen2 has no sliding window"),
]


@pytest.mark.parametrize(("model_type", "change", "message"), REFUSED)
def test_configs_llama_cpp_would_run_differently_are_refused(
    byte_level_tokenizer, tmp_path, model_type, change, message
):
    tiny_family_model(model_type, byte_level_tokenizer, tmp_path, **change)
    with pytest.raises(TunesmithError, match=message):
        write_model_gguf(tmp_path, tmp_path / "out.gguf", "f32", model_type)
    assert not (tmp_path / "out.gguf").exists()


# model type, adapted modules, the llama.cpp tensors their LoRA pairs attach to
LORA = [
    ("qwen2", ["q_proj", "v_proj"], ["blk.0.attn_q.weight", "blk.1.attn_v.weight"]),
    ("phi3", ["qkv_proj", "gate_up_proj"], ["blk.0.attn_qkv.weight", "blk.1.ffn_up.weight"]),
    ("gemma3_text", ["q_proj", "down_proj"], ["blk.0.attn_q.weight", "blk.5.ffn_down.weight"]),
]


@pytest.mark.parametrize(("model_type", "modules", "targets"), LORA)
def test_lora_adapters_of_each_family_attach_to_llama_cpp_tensors(exported, tmp_path, model_type, modules, targets):
    from peft import LoraConfig, get_peft_model

    reference, path = exported(model_type)
    torch.manual_seed(0)
    peft_model = get_peft_model(
        copy.deepcopy(reference), LoraConfig(r=4, lora_alpha=8, target_modules=modules, init_lora_weights=False)
    )
    peft_model.save_pretrained(tmp_path / "adapter")
    out = write_lora_gguf(tmp_path / "adapter", path.parent, tmp_path / "lora.gguf", "f32", "lora")
    tensors = {t.name: t.data for t in gguf.GGUFReader(out).tensors}
    layers = reference.config.num_hidden_layers
    assert len(tensors) == 2 * len(modules) * layers
    for target in targets:
        assert tensors[f"{target}.lora_a"].shape[0] == 4 and tensors[f"{target}.lora_b"].shape[1] == 4
    # these families keep Hugging Face's row order (NeoX rotation): B goes in unchanged
    state = peft_model.state_dict()
    module = f"base_model.model.model.layers.0.{'self_attn' if 'proj' in modules[0] else 'mlp'}.{modules[0]}"
    expected = state[f"{module}.lora_B.default.weight"].detach().numpy()
    assert torch.equal(torch.from_numpy(tensors[f"{targets[0]}.lora_b"].copy()), torch.from_numpy(expected))


# Mistral's sliding window (max_position_embeddings 512), the context the llama-arch file declares
MISTRAL_WINDOWS = [(None, 512), (128, 128), (4096, 512)]


@pytest.mark.parametrize(("window", "context"), MISTRAL_WINDOWS)
def test_mistral_declares_no_more_context_than_its_sliding_window(byte_level_tokenizer, tmp_path, window, context):
    tiny_family_model("mistral", byte_level_tokenizer, tmp_path, sliding_window=window)
    path = write_model_gguf(tmp_path, tmp_path / "out.gguf", "f32", "tiny-mistral")
    assert gguf.GGUFReader(path).fields["llama.context_length"].contents() == context
