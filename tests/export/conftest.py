import functools

import pytest
from gguf_checks import greedy
from transformers import AutoModelForCausalLM, AutoTokenizer

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
