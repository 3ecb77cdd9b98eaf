"""GGUF export of the tiny model: read back by transformers' own GGUF loader, it is the same model."""

import json

import gguf
import numpy as np
import pytest
import torch
from gguf_checks import REPO, greedy, load_gguf, logit_ids, max_logit_difference
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

from tunesmith.errors import TunesmithError
from tunesmith.export.gguf import llama3_rope_factors, write_model_gguf
from tunesmith.models import tokenizer_from_gguf

# outtype, max |logit difference| on 64 tokens
ROUND_TRIP = [("f32", 1e-4), ("f16", 5e-2)]


@pytest.mark.parametrize(("outtype", "tolerance"), ROUND_TRIP)
def test_round_trip_gives_the_merged_models_logits_and_answers(tiny_reference, tiny_gguf, outtype, tolerance):
    reference, tokenizer, answers = tiny_reference
    model = load_gguf(tiny_gguf(outtype))
    assert max_logit_difference(model, reference, logit_ids(tokenizer)) <= tolerance
    assert greedy(model, tokenizer) == answers


def _shipped_lines(count: int) -> list[str]:
    lines = (REPO / "data/e2e_nlg/train.jsonl").read_text().splitlines()[: count // 2]
    lines += (REPO / "data/trec/train.jsonl").read_text().splitlines()[: count // 2 - 3]
    lines += (REPO / "data/general/general.txt").read_text().splitlines()
    return lines


def test_tokenizer_read_back_from_the_gguf_encodes_shipped_data_to_the_same_ids(tiny_run, tiny_gguf):
    path = tiny_gguf("f32")
    ours = AutoTokenizer.from_pretrained(tiny_run / "merged")
    # Read back as `tunesmith generate --model X.gguf` does: transformers' own GGUF reader has no entry
    # for 'smollm' and splits the GPT-2 way (models.pretokenizers).
    theirs = tokenizer_from_gguf(path)
    lines = _shipped_lines(1000)
    assert len(lines) == 1000
    assert [theirs(line).input_ids for line in lines] == [ours(line).input_ids for line in lines]
    assert theirs.chat_template == ours.chat_template
    for kind in ("bos", "eos", "pad", "unk"):
        assert getattr(theirs, f"{kind}_token_id") == getattr(ours, f"{kind}_token_id"), kind
    chat = [{"role": "user", "content": "name[Zizzi], priceRange[£20-25]"}]
    assert theirs.apply_chat_template(chat, add_generation_prompt=True) == ours.apply_chat_template(
        chat, add_generation_prompt=True
    )


def test_metadata_says_what_runtimes_need_and_bf16_holds_rounded_weights(tiny_run, tiny_gguf):
    from safetensors.torch import load_file

    reader = gguf.GGUFReader(tiny_gguf("bf16"))
    field = lambda key: reader.fields[key].contents()  # noqa: E731
    assert field("general.architecture") == "llama"
    assert field("general.file_type") == gguf.LlamaFileType.MOSTLY_BF16
    assert field("tokenizer.ggml.model") == "gpt2"
    # the run's tokenizer is SmolLM2's: digits one by one, then GPT-2's split: llama.cpp's "smollm"
    assert field("tokenizer.ggml.pre") == "smollm"
    assert field("tokenizer.ggml.token_type")[:3] == [gguf.TokenType.CONTROL] * 3
    assert field("tokenizer.ggml.add_bos_token") is False
    assert field("llama.attention.head_count_kv") == 2
    tensors = {t.name: t for t in reader.tensors}
    assert "output.weight" not in tensors  # tied to the embedding, as llama.cpp expects
    assert tensors["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    down = tensors["blk.1.ffn_down.weight"]
    assert down.tensor_type == gguf.GGMLQuantizationType.BF16
    weights = load_file(tiny_run / "merged/model.safetensors")
    expected = weights["model.layers.1.mlp.down_proj.weight"].to(torch.bfloat16).float().numpy()
    assert np.array_equal(gguf.dequantize(down.data, down.tensor_type).reshape(expected.shape), expected)


def test_other_architectures_are_refused_naming_the_supported_ones(tmp_path, tiny_run):
    GPT2LMHeadModel(GPT2Config(vocab_size=49152, n_embd=32, n_layer=1, n_head=2)).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(tiny_run / "merged").save_pretrained(tmp_path)
    with pytest.raises(
        TunesmithError,
        match=r"supports model types llama, mistral, qwen2, qwen3, gemma2, gemma3_text, phi3 .*"
        r"this model is 'gpt2' \(GPT2LMHeadModel\)$",
    ):
        write_model_gguf(tmp_path, tmp_path / "out.gguf", "f16", "gpt2")
    assert not (tmp_path / "out.gguf").exists()


def test_llama3_rope_factors_match_transformers_llama3_scaling():
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rope = {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    config = LlamaConfig(hidden_size=2048, num_attention_heads=32, rope_parameters=rope)
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    plain = 1.0 / (500000.0 ** (torch.arange(0, 64, 2, dtype=torch.float32) / 64))
    np.testing.assert_allclose(llama3_rope_factors(rope, 64), (plain / scaled).numpy(), rtol=1e-5)


def test_a_failed_export_leaves_no_file(tmp_path, tiny_run, monkeypatch):
    import tunesmith.export.gguf as module

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(module, "_add_tensor", broken)
    with pytest.raises(RuntimeError):
        write_model_gguf(tiny_run / "merged", tmp_path / "model.gguf", "f16", "tiny")
    assert list(tmp_path.iterdir()) == []
    assert json.loads((tiny_run / "merged/config.json").read_text())["model_type"] == "llama"
