"""The tokenizer as GGUF metadata: vocabulary, merges, token types, special ids, chat template.

A GGUF runtime rebuilds the tokenizer from these keys alone, so they must describe the tokenizer the
run trained with: the one saved in the run's merged folder (tokenizer.json), not the base model's
original. Two kinds of BPE are written: byte-level (GPT-2 style: SmolLM, Llama 3), which llama.cpp
calls "gpt2", and SentencePiece-style with byte fallback (Llama 2, TinyLlama, Mistral), "llama".
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from tunesmith.errors import TunesmithError

# llama.cpp picks its split regex by the name in `tokenizer.ggml.pre`; these are the names for the
# pre-tokenizers of the Llama family's byte-level vocabularies.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def _steps(pre_tokenizer: dict | None) -> list[dict]:
    if not pre_tokenizer:
        return []
    return pre_tokenizer["pretokenizers"] if pre_tokenizer.get("type") == "Sequence" else [pre_tokenizer]


def byte_level_pre_name(spec: dict, source: str) -> str:
    """llama.cpp's name for this byte-level pre-tokenizer: same name, same split of the text."""
    steps = _steps(spec.get("pre_tokenizer"))
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"  # llama.cpp refuses "gpt2" (unknown pre-tokenizer type)
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and steps[0].get("pattern", {}).get("Regex") == LLAMA3_SPLIT:
        return "llama-bpe"
    raise TunesmithError(
        f"{source}: GGUF export knows the GPT-2, SmolLM and Llama 3 pre-tokenizers; this tokenizer's is "
        f"{' + '.join(k or '?' for k in kinds) or 'none'}"
    )


def _merges(spec: dict) -> list[str]:
    # tokenizers >= 0.20 stores merges as pairs; GGUF keeps "left right" strings, so a space inside
    # a part is written as U+0120, the way gguf's own reader of tokenizer.json does.
    return [
        m if isinstance(m, str) else " ".join(part.replace(" ", "\u0120") for part in m)
        for m in spec["model"].get("merges", [])
    ]


def adds_token(tokenizer, token_id: int | None, first: bool) -> bool:
    """Whether plain encoding adds this special token: what llama.cpp's add_bos/add_eos flags mean."""
    if token_id is None:
        return False
    ids = tokenizer("a").input_ids
    plain = tokenizer("a", add_special_tokens=False).input_ids
    return len(ids) > len(plain) and (ids[0] if first else ids[-1]) == token_id


def _adds_space_prefix(spec: dict) -> bool:
    """SentencePiece vocabularies mark a word start with U+2581; whether text gets one in front."""
    normalizer = spec.get("normalizer") or {}
    normalizers = normalizer.get("normalizers", [normalizer]) if normalizer.get("type") == "Sequence" else [normalizer]
    if any(n.get("type") == "Prepend" for n in normalizers):
        return True
    return any(
        s.get("type") == "Metaspace"
        and (s.get("prepend_scheme", "always") != "never" and s.get("add_prefix_space", True))
        for s in _steps(spec.get("pre_tokenizer"))
    )


def add_tokenizer(writer, folder: Path, tokenizer, n_vocab: int) -> None:
    """Write the tokenizer of the HF folder `folder` (already loaded as `tokenizer`) into `writer`."""
    from gguf import TokenType

    path = folder / "tokenizer.json"
    if not path.is_file():
        raise TunesmithError(f"{folder}: GGUF export needs the fast tokenizer's tokenizer.json")
    spec = json.loads(path.read_text(encoding="utf-8"))
    model = spec["model"]
    if model.get("type") != "BPE":
        raise TunesmithError(f"{path}: GGUF export supports BPE tokenizers; this one is {model.get('type')!r}")
    sentencepiece = bool(model.get("byte_fallback"))
    if sentencepiece:
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
    else:
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(byte_level_pre_name(spec, str(path)))

    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    if len(by_id) > n_vocab:
        raise TunesmithError(f"{folder}: the tokenizer has {len(by_id)} tokens, the model only {n_vocab} rows")
    tokens, types, scores = [], [], []
    for index in range(n_vocab):
        token = by_id.get(index)
        if token is None:
            # Embedding rows past the tokenizer (vocabularies padded to a multiple of 64/128).
            tokens.append(f"[PAD{index}]")
            types.append(TokenType.UNUSED)
        elif index in added:
            tokens.append(added[index].content)
            types.append(TokenType.CONTROL if added[index].special else TokenType.USER_DEFINED)
        else:
            tokens.append(token)
            types.append(TokenType.BYTE if sentencepiece and BYTE_TOKEN.fullmatch(token) else TokenType.NORMAL)
        # SentencePiece merges by score; its vocabularies are numbered in merge order.
        scores.append(-float(index) if types[-1] == TokenType.NORMAL else 0.0)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    if sentencepiece:
        writer.add_token_scores(scores)
    writer.add_token_merges(_merges(spec))

    for kind in ("bos", "eos", "unk", "pad"):
        token_id = getattr(tokenizer, f"{kind}_token_id")
        if token_id is not None:
            getattr(writer, f"add_{kind}_token_id")(token_id)
    writer.add_add_bos_token(adds_token(tokenizer, tokenizer.bos_token_id, first=True))
    writer.add_add_eos_token(adds_token(tokenizer, tokenizer.eos_token_id, first=False))
    if sentencepiece:
        writer.add_add_space_prefix(_adds_space_prefix(spec))
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)
