"""Model loading: built-in names, the GGUF cache, tokenizer checks."""

import json

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from tunesmith.errors import TunesmithError
from tunesmith.models import check_tokenizer_matches, load_model, resolve_model_path


def test_cached_default_model_is_a_plain_hf_checkpoint_with_its_own_tokenizer(smol_tokenizer):
    folder = resolve_model_path("smollm2-135m-instruct")
    config = json.loads(open(f"{folder}/config.json").read())
    assert "quantization_config" not in config  # transformers keeps it after GGUF dequantisation
    assert config["vocab_size"] == len(smol_tokenizer) == 49152
    assert smol_tokenizer.eos_token == "<|im_end|>"
    ids = smol_tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    assert smol_tokenizer.decode(ids["input_ids"] if isinstance(ids, dict) else ids).endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize(
    "name, message",
    [
        ("no-such-model", "model not found: 'no-such-model'"),
        ("/nowhere/model.gguf", "model file not found: /nowhere/model.gguf"),
    ],
)
def test_unknown_models_are_refused(name, message):
    with pytest.raises(TunesmithError, match=message):
        resolve_model_path(name)


def test_folder_without_config_is_refused(tmp_path):
    with pytest.raises(TunesmithError, match="has no config.json"):
        resolve_model_path(str(tmp_path))


def test_tokenizer_of_another_vocabulary_is_refused(smol_tokenizer, tmp_path):
    small = LlamaForCausalLM(
        LlamaConfig(vocab_size=1000, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    )
    with pytest.raises(TunesmithError, match="tokenizer has 49152 tokens but the model's embedding has 1000 rows"):
        check_tokenizer_matches(smol_tokenizer, small, "small")
    # The same model saved with a foreign tokenizer fails at load time, before any training.
    small.save_pretrained(tmp_path)
    smol_tokenizer.save_pretrained(tmp_path)
    with pytest.raises(TunesmithError, match="use the tokenizer that ships with the model"):
        load_model(str(tmp_path))


def test_tiny_test_model_is_deterministic_and_shares_the_tokenizer(tiny_model_name, smol_tokenizer):
    loaded = load_model(tiny_model_name)
    assert loaded.model.config.num_hidden_layers == 2
    assert len(loaded.tokenizer) == len(smol_tokenizer)
    first = next(loaded.model.parameters()).detach().clone()
    assert torch.equal(first, next(load_model(tiny_model_name).model.parameters()))
    assert AutoTokenizer.from_pretrained(loaded.path).eos_token == "<|im_end|>"
