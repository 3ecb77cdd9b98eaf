"""The GGUF pre-tokenizer (`tokenizer.ggml.pre`) mapped to the splitting each family was pretrained with."""

import json

import gguf
import pytest
from tokenizers import Tokenizer
from tokenizers.models import BPE

from tunesmith.errors import TunesmithError
from tunesmith.models import resolve_model_path
from tunesmith.models.pretokenizers import GgufTokenizerKind, apply_pretrained_splitting, read_gguf_tokenizer_kind

# What SmolLM2's own tokenizer.json (Digits(individual_digits=True) then GPT-2's ByteLevel split) gives.
# transformers' GGUF rebuild, GPT-2's split alone, gave `Ċ Ċ` for `ĊĊ` and `Ġ Ġ` for `ĠĠ`.
SMOLLM2_TOKENS = [
    ("a\n\n3", ["a", "ĊĊ", "3"]),
    ("x =  5", ["x", "Ġ=", "ĠĠ", "5"]),
    ("1234", ["1", "2", "3", "4"]),
    ("year 2024.", ["year", "Ġ", "2", "0", "2", "4", "."]),
    ("1. a\n2. b", ["1", ".", "Ġa", "Ċ", "2", ".", "Ġb"]),
    ("| 7 |  8 |", ["|", "Ġ", "7", "Ġ|", "ĠĠ", "8", "Ġ|"]),
    ("Hello world!", ["Hello", "Ġworld", "!"]),
    ("def f(x):\n    return x", ["def", "Ġf", "(", "x", "):", "ĊĠĠĠ", "Ġreturn", "Ġx"]),
]


@pytest.mark.parametrize("text, tokens", SMOLLM2_TOKENS)
def test_smollm2_tokenizes_as_pretrained(smol_tokenizer, text, tokens):
    assert smol_tokenizer.tokenize(text) == tokens
    ids = smol_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert smol_tokenizer.decode(ids) == text


def test_cached_smollm2_tokenizer_json_has_its_own_pre_tokenizer(smol_tokenizer):
    saved = json.loads(open(f"{resolve_model_path('smollm2-135m-instruct')}/tokenizer.json").read())
    assert [step["type"] for step in saved["pre_tokenizer"]["pretokenizers"]] == ["Digits", "ByteLevel"]
    assert saved["pre_tokenizer"]["pretokenizers"][0]["individual_digits"] is True


def _pipeline(model, pre, add_space_prefix=False):
    tokenizer = Tokenizer(BPE())
    apply_pretrained_splitting(tokenizer, GgufTokenizerKind(model, pre, add_space_prefix), "model.gguf")
    return tokenizer


def _split(tokenizer, text):
    if tokenizer.normalizer is not None:
        text = tokenizer.normalizer.normalize_str(text)
    return [piece for piece, _ in tokenizer.pre_tokenizer.pre_tokenize_str(text)]


# Pieces before BPE, in the byte alphabet (Ġ a space, Ċ a newline), from each family's own regex.
SPLITS = [
    ("gpt-2", "12345 apples\n\nx", ["12345", "Ġapples", "Ċ", "Ċ", "x"]),
    ("gpt-2", "I'LL go", ["I", "'", "LL", "Ġgo"]),
    ("smollm", "12345 apples\n\nx", ["1", "2", "3", "4", "5", "Ġapples", "Ċ", "Ċ", "x"]),
    ("smollm", "x =  5", ["x", "Ġ=", "ĠĠ", "5"]),
    ("starcoder", "a\n\n3", ["a", "ĊĊ", "3"]),
    ("llama-bpe", "12345 apples\n\nx", ["123", "45", "Ġapples", "ĊĊ", "x"]),
    ("llama-bpe", "I'LL go", ["I", "'LL", "Ġgo"]),
    ("llama3", "x =  5", ["x", "Ġ=", "Ġ", "Ġ", "5"]),
    ("qwen2", "12345 apples\n\nx", ["1", "2", "3", "4", "5", "Ġapples", "ĊĊ", "x"]),
    ("qwen2", "I'LL go", ["I", "'LL", "Ġgo"]),
    # NFC first: 'e' + combining acute becomes one 'é' (two bytes, Ã©), as in Qwen2's tokenizer.json.
    ("qwen2", "cafe\u0301", ["cafÃ©"]),
]


@pytest.mark.parametrize("pre, text, pieces", SPLITS)
def test_byte_level_pre_tokenizers_split_as_their_family(pre, text, pieces):
    assert _split(_pipeline("gpt2", pre), text) == pieces


@pytest.mark.parametrize(
    "add_space_prefix, text, pieces",
    [
        # Gemma's files: no prefix space, every space a '▁', nothing split.
        (False, "Hello  world 42", ["Hello\u2581\u2581world\u258142"]),
        # Llama 2 / Mistral: a '▁' in front of the text, which decoding removes again.
        (True, "Hello  world 42", ["\u2581Hello\u2581\u2581world\u258142"]),
    ],
)
def test_sentencepiece_escapes_spaces_and_splits_nothing(add_space_prefix, text, pieces):
    tokenizer = _pipeline("llama", "default", add_space_prefix)
    assert _split(tokenizer, text) == pieces
    assert tokenizer.decoder.decode(list(pieces[0])) == text


@pytest.mark.parametrize(
    "model, pre",
    [("gpt2", "deepseek-llm"), ("gpt2", None), ("gpt2", "default"), ("llama", "smollm"), ("t5", None)],
)
def test_unknown_pre_tokenizers_are_refused_in_one_line(model, pre):
    with pytest.raises(TunesmithError) as error:
        _pipeline(model, pre)
    message = str(error.value)
    assert message.startswith(f"model.gguf: tokenizer.ggml.model={model!r} with tokenizer.ggml.pre={pre!r}")
    assert "\n" not in message and "smollm" in message


@pytest.mark.parametrize(
    "fields, kind",
    [
        ({"model": "gpt2", "pre": "smollm", "prefix": False}, GgufTokenizerKind("gpt2", "smollm", False)),
        # llama.cpp's defaults when the file has no add_space_prefix: SentencePiece adds one, BPE does not.
        ({"model": "llama", "pre": "default"}, GgufTokenizerKind("llama", "default", True)),
        ({"model": "llama"}, GgufTokenizerKind("llama", None, True)),
        ({"model": "gpt2", "pre": "qwen2"}, GgufTokenizerKind("gpt2", "qwen2", False)),
    ],
)
def test_tokenizer_kind_is_read_from_gguf_metadata(tmp_path, fields, kind):
    path = tmp_path / "m.gguf"
    writer = gguf.GGUFWriter(path, arch="llama")
    writer.add_tokenizer_model(fields["model"])
    if "pre" in fields:
        writer.add_tokenizer_pre(fields["pre"])
    if "prefix" in fields:
        writer.add_add_space_prefix(fields["prefix"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert read_gguf_tokenizer_kind(path) == kind
