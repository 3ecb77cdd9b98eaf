"""The real SmolLM2-135M-Instruct after a short LoRA run, exported and read back by transformers."""

import pytest
from gguf_checks import greedy, load_gguf, logit_ids, max_logit_difference
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunesmith.export import export_run
from tunesmith.train.recipe import train


@pytest.fixture(scope="module")
def smol_run(tmp_path_factory, make_tiny_config):
    out = tmp_path_factory.mktemp("smol") / "run"
    cfg = make_tiny_config(
        out,
        model="smollm2-135m-instruct",
        method={"dropout": 0.0},
        train={"max_steps": 3, "lr": 1e-3, "eval_every": 3, "save_every": 100},
        eval={"samples": 0},
    )
    train(cfg)
    model = AutoModelForCausalLM.from_pretrained(out / "merged").eval()
    tokenizer = AutoTokenizer.from_pretrained(out / "merged")
    return out, model, tokenizer, greedy(model, tokenizer)


# outtype, max |logit difference| on 64 tokens (None: not compared), greedy answers that must match
ROUND_TRIP = [("f32", 1e-4, 5), ("f16", 5e-2, 5), ("q8_0", None, 4)]


@pytest.mark.slow
@pytest.mark.parametrize(("outtype", "tolerance", "same_answers"), ROUND_TRIP)
def test_smollm2_round_trip(smol_run, tmp_path, outtype, tolerance, same_answers):
    run, reference, tokenizer, answers = smol_run
    model = load_gguf(export_run(run, "gguf", outtype, tmp_path / f"smol-{outtype}.gguf"))
    if tolerance is not None:
        assert max_logit_difference(model, reference, logit_ids(tokenizer)) <= tolerance
    assert sum(a == b for a, b in zip(greedy(model, tokenizer), answers, strict=True)) >= same_answers
