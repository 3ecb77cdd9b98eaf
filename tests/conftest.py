import json
from pathlib import Path

import pytest

from tunesmith.config import config_from_dict
from tunesmith.models import DEFAULT_MODEL, MINILM_L6, TINY_TEST_MODEL, load_model, load_tokenizer, resolve_model_path

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def smol_tokenizer():
    """SmolLM2-135M-Instruct's own tokenizer (the tiny test model shares it)."""
    return load_tokenizer(DEFAULT_MODEL)


@pytest.fixture(scope="session")
def tiny_model_name():
    load_model(TINY_TEST_MODEL)  # build the cached folder once per session
    return TINY_TEST_MODEL


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    """A plain HF folder: BertModel with random weights from a fixed seed, and a real WordPiece tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(MINILM_L6))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def byte_level_tokenizer():
    """SmolLM2's tokenizer style (per-digit split, then byte-level BPE; ChatML specials) with a
    400-token vocabulary: transformers' GGUF reader takes ~35 s per load on SmolLM2's 49k tokens, and
    a tiny model's output layer stays as small as the rest of it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rows = (REPO / "data/e2e_nlg/train.jsonl").read_text().splitlines()[:2000]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    bpe.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator((json.loads(row)["completion"] for row in rows), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )


@pytest.fixture(scope="session")
def small_e2e(tmp_path_factory):
    """64 training and 16 validation lines of the shipped E2E data."""
    folder = tmp_path_factory.mktemp("e2e")
    lines = (REPO / "data/e2e_nlg/train.jsonl").read_text().splitlines()
    (folder / "train.jsonl").write_text("\n".join(lines[:64]) + "\n")
    (folder / "validation.jsonl").write_text("\n".join(lines[64:80]) + "\n")
    return folder


@pytest.fixture(scope="session")
def write_pairs():
    """write_pairs(path, n, openai): n preference pairs on arithmetic parity, OpenAI's DPO JSONL
    (openai=True) or {prompt, chosen, rejected}; the preferred answer is always the right one."""

    def write(path, n: int, openai: bool):
        rows = []
        for i in range(n):
            prompt = [{"role": "user", "content": f"Question {i}: is {i} even?"}]
            good, bad = ("Yes." if i % 2 == 0 else "No."), "I refuse to do maths."
            if openai:
                rows.append(
                    {
                        "input": {"messages": prompt},
                        "preferred_output": [{"role": "assistant", "content": good}],
                        "non_preferred_output": [{"role": "assistant", "content": bad}],
                    }
                )
            else:
                rows.append({"prompt": prompt, "chosen": good, "rejected": bad})
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return path

    return write


@pytest.fixture(scope="session")
def make_tiny_config(tiny_model_name, small_e2e):
    """A fast LoRA run on the tiny model and the small E2E set; tests override what they need."""

    def make(out_dir, **sections):
        raw = {
            "model": tiny_model_name,
            "data": {
                "train": str(small_e2e / "train.jsonl"),
                "validation": str(small_e2e / "validation.jsonl"),
                "max_seq_len": 160,  # the longest of these examples has 134 tokens
            },
            "method": {"name": "lora", "r": 8, "alpha": 16, "dropout": 0.1},
            "train": {
                "max_steps": 20,
                "batch_size": 4,
                "lr": 5e-3,
                "warmup_steps": 2,
                "eval_every": 5,
                "save_every": 10,
                "log_every": 5,
                "seed": 3,
                "dtype": "float32",
            },
            "eval": {"samples": 2, "max_new_tokens": 4},
            "out_dir": str(out_dir),
        }
        for section, values in sections.items():
            raw[section] = {**raw.get(section, {}), **values} if isinstance(values, dict) else values
        return config_from_dict(raw)

    return make


@pytest.fixture
def tiny_config(make_tiny_config, tmp_path):
    return lambda out_dir=tmp_path / "run", **sections: make_tiny_config(out_dir, **sections)
