import functools
import json

import pytest
from gguf_checks import REPO, greedy
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from tunesmith.export import export_run
from tunesmith.train.recipe import train


@pytest.fixture(scope="session")
def tiny_run(make_tiny_config, tmp_path_factory):
    """A short LoRA run on the tiny model: merged/, adapter/ and config.yaml to export."""
    out = tmp_path_factory.mktemp("export") / "tiny-run"
    cfg = make_tiny_config(
        out,
        method={"dropout": 0.0},
        train={"max_steps": 6, "eval_every": 3, "save_every": 100},
        eval={"samples": 0, "max_new_tokens": 4},
    )
    train(cfg)
    return out


@pytest.fixture(scope="session")
def tiny_reference(tiny_run):
    """The run's merged model and tokenizer, and their greedy answers: what every export must match."""
    model = AutoModelForCausalLM.from_pretrained(tiny_run / "merged").eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_run / "merged")
    return model, tokenizer, greedy(model, tokenizer)


@pytest.fixture(scope="session")
def tiny_gguf(tiny_run, tmp_path_factory):
    folder = tmp_path_factory.mktemp("gguf")

    @functools.cache
    def export(outtype: str):
        return export_run(tiny_run, "gguf", outtype, folder / f"tiny-{outtype}.gguf")

    return export


@pytest.fixture(scope="session")
def byte_level_tokenizer():
    """SmolLM2's tokenizer style (per-digit split, then byte-level BPE; ChatML specials) with a
    400-token vocabulary: transformers' GGUF reader takes ~35 s per load on SmolLM2's 49k tokens."""
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
