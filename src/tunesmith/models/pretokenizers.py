"""The text splitting a GGUF vocabulary was trained with, as a Hugging Face `tokenizers` pipeline.

A GGUF names its splitting in `tokenizer.ggml.pre` (llama.cpp's name, e.g. 'smollm') and its
vocabulary type in `tokenizer.ggml.model` ('gpt2' byte-level BPE, 'llama' SentencePiece). transformers
rebuilds the vocabulary from the file but knows only some of those names and falls back to GPT-2's
splitting for the rest, so SmolLM2 ('smollm', digits split one by one first) got `"a\\n\\n3"` as
`Ċ Ċ 3` where pretraining saw `ĊĊ 3`. Here each known name maps to the normalizer, pre-tokenizer and
decoder of that family's own tokenizer.json (the regexes are the ones in llama.cpp's llama-vocab.cpp
and in the families' tokenizer.json); an unknown name is refused rather than guessed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tokenizers import Regex, decoders, normalizers, pre_tokenizers

from tunesmith.errors import TunesmithError

_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Qwen2's is Llama 3's with single digits (\p{N} instead of \p{N}{1,3}).
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPM_PRE = "default"


@dataclass(frozen=True)
class GgufTokenizerKind:
    """What a GGUF says about its tokenizer: `tokenizer.ggml.model`, `.pre` and `.add_space_prefix`."""

    model: str | None
    pre: str | None
    add_space_prefix: bool


def _gpt2(_kind: GgufTokenizerKind):
    return None, pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)


def _digits_then_gpt2(_kind: GgufTokenizerKind):
    # StarCoder's tokenizer, which SmolLM reuses: every digit on its own before GPT-2's split.
    return None, pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ]
    )


def _split_then_bytes(pattern: str, normalizer=None):
    def build(_kind: GgufTokenizerKind):
        return normalizer, pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
            ]
        )

    return build


# llama.cpp's names (src/llama-vocab.cpp) of byte-level BPE splits -> (normalizer, pre-tokenizer).
BYTE_LEVEL_PRE = {
    "gpt-2": _gpt2,
    # Not a llama.cpp name, but what tunesmith's GGUF export wrote for "gpt-2" before it was corrected.
    "gpt2": _gpt2,
    "smollm": _digits_then_gpt2,
    "starcoder": _digits_then_gpt2,
    "llama-bpe": _split_then_bytes(_LLAMA3_SPLIT),
    "llama3": _split_then_bytes(_LLAMA3_SPLIT),
    "llama-v3": _split_then_bytes(_LLAMA3_SPLIT),
    # Qwen2's tokenizer.json composes Unicode (NFC) before splitting.
    "qwen2": _split_then_bytes(_QWEN2_SPLIT, normalizers.NFC()),
}


def _sentencepiece(tokenizer, kind: GgufTokenizerKind) -> None:
    # SentencePiece (Gemma, Llama 2, Mistral) splits nothing: a space becomes '▁' and BPE runs over the
    # whole text, with a '▁' put in front when the file asks for a prefix space (Gemma's files do not).
    # As the families' tokenizer.json (and transformers' LlamaTokenizer) do, the prefix goes before the
    # first piece of text only; llama.cpp also puts one after each special token.
    tokenizer.normalizer = None
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="\u2581", prepend_scheme="first" if kind.add_space_prefix else "never", split=False
    )
    steps = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    if kind.add_space_prefix:
        steps.append(decoders.Strip(content=" ", left=1, right=0))
    tokenizer.decoder = decoders.Sequence(steps)


def apply_pretrained_splitting(tokenizer, kind: GgufTokenizerKind, source: str) -> None:
    """Set the backend `tokenizers.Tokenizer`'s normalizer, pre-tokenizer and decoder to the ones `kind`
    names; `source` (the file) is named in the error when `kind` is not one we know exactly."""
    if kind.model == "llama" and kind.pre in (None, SPM_PRE):
        _sentencepiece(tokenizer, kind)
        return
    build = BYTE_LEVEL_PRE.get(kind.pre) if kind.model == "gpt2" else None
    if build is None:
        raise TunesmithError(
            f"{source}: tokenizer.ggml.model={kind.model!r} with tokenizer.ggml.pre={kind.pre!r} is a text "
            f"splitting tunesmith does not know, and a guess would tokenize differently from pretraining; "
            f"known: SentencePiece ('llama' with 'default'), byte-level BPE ('gpt2') with "
            f"{', '.join(sorted(BYTE_LEVEL_PRE))}; or load the model's Hugging Face folder instead"
        )
    tokenizer.normalizer, tokenizer.pre_tokenizer = build(kind)
    tokenizer.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)


def read_gguf_tokenizer_kind(gguf: Path) -> GgufTokenizerKind:
    from gguf import GGUFReader

    reader = GGUFReader(gguf)

    def value(key: str):
        field = reader.get_field(key)
        return None if field is None else field.contents()

    model = value("tokenizer.ggml.model")
    prefix = value("tokenizer.ggml.add_space_prefix")
    # llama.cpp's default when the key is absent: a prefix space for SentencePiece, none for BPE.
    return GgufTokenizerKind(
        model=model,
        pre=value("tokenizer.ggml.pre"),
        add_space_prefix=model == "llama" if prefix is None else bool(prefix),
    )
