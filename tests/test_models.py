"""Model loading: built-in names, the GGUF cache, tokenizer checks."""

import json
import shutil

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from tunesmith.errors import TunesmithError
from tunesmith.models import (
    CACHE_STAMP,
    CACHE_VERSION,
    DEFAULT_MODEL,
    TINY_TEST_MODEL,
    check_tokenizer_matches,
    load_model,
    load_tokenizer,
    resolve_model_path,
)


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


def _make_it_look_like_an_old_cache(folder, stamp):
    """The cache as built before versioning: no stamp (or an older one) and GPT-2's split alone."""
    if stamp is None:
        (folder / CACHE_STAMP).unlink()
    else:
        (folder / CACHE_STAMP).write_text(json.dumps(stamp))
    saved = json.loads((folder / "tokenizer.json").read_text())
    saved["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    (folder / "tokenizer.json").write_text(json.dumps(saved))


def test_caches_built_before_the_tokenizer_fix_are_rebuilt(smol_tokenizer, tiny_model_name, tmp_path, monkeypatch):
    # Copies of this session's caches, so the shared ones are left alone (the weights are not needed: a
    # rebuild replaces them); rebuilding the GGUF one takes ~20 s.
    for name, stamp in [(DEFAULT_MODEL, None), (TINY_TEST_MODEL, {"version": CACHE_VERSION - 1})]:
        shutil.copytree(
            resolve_model_path(name), tmp_path / "models" / name, ignore=shutil.ignore_patterns("*.safetensors")
        )
        _make_it_look_like_an_old_cache(tmp_path / "models" / name, stamp)
    monkeypatch.setenv("TUNESMITH_HOME", str(tmp_path))
    old = AutoTokenizer.from_pretrained(tmp_path / "models" / TINY_TEST_MODEL)
    assert old.tokenize("a\n\n3") == ["a", "Ċ", "Ċ", "3"]

    tokenizer = load_tokenizer(TINY_TEST_MODEL)  # rebuilds the tiny model's cache, and SmolLM2's under it

    for name in (DEFAULT_MODEL, TINY_TEST_MODEL):
        folder = tmp_path / "models" / name
        assert json.loads((folder / CACHE_STAMP).read_text()) == {"version": CACHE_VERSION}
        assert AutoTokenizer.from_pretrained(folder).tokenize("x =  5") == ["x", "Ġ=", "ĠĠ", "5"]
    assert tokenizer.tokenize("a\n\n3") == ["a", "ĊĊ", "3"]
    # A current cache is used as it is.
    built = (tmp_path / "models" / DEFAULT_MODEL / "config.json").stat().st_mtime_ns
    resolve_model_path(TINY_TEST_MODEL)
    assert (tmp_path / "models" / DEFAULT_MODEL / "config.json").stat().st_mtime_ns == built
