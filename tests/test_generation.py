"""The decoding loop's shortcuts give the tokens of the plain path: a prompt shared by several rows
is prefilled once, and the prefill computes the last position's logits only."""

import pytest
import torch

import tunesmith.generation as generation
from tunesmith.generation import Sampling, generate_tokens, model_device, sampler
from tunesmith.models import load_model

PROMPTS = [[1, 4093, 198, 314], [1, 1780, 314, 260, 1133, 28], [1, 9, 198]]  # three lengths: left padding


@pytest.fixture(scope="module")
def tiny(tiny_model_name):
    return load_model(tiny_model_name).model.eval()


def _tokens(model, prompts, copies, temperature, batch_size, seed=7):
    pick = sampler(Sampling(12, temperature, 0.9, seed), model_device(model))
    return generate_tokens(model, prompts, 0, None, 12, batch_size, pick, copies=copies)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("batch_size", [12, 5])  # 5: batches of 5, 5 and 2 rows split groups
def test_a_prompt_shared_by_its_group_is_sampled_as_its_copies_are(tiny, temperature, batch_size):
    copies = 4
    plain = _tokens(tiny, [p for p in PROMPTS for _ in range(copies)], 1, temperature, batch_size)
    shared = _tokens(tiny, PROMPTS, copies, temperature, batch_size)
    assert shared == plain
    assert all(len(row) == 12 for row in shared)  # no eos: every row ran the whole budget
    if temperature > 0:  # the group's answers differ from one another: sampled, not copied
        assert len({tuple(row) for row in shared[:copies]}) > 1


def test_the_last_position_logits_give_the_tokens_of_all_logits(tiny, monkeypatch):
    rows = [p for p in PROMPTS for _ in range(2)]
    assert generation.last_logits_only(tiny) == {"logits_to_keep": 1}
    kept = _tokens(tiny, rows, 1, 1.0, 6)
    monkeypatch.setattr(generation, "last_logits_only", lambda model: {})
    assert _tokens(tiny, rows, 1, 1.0, 6) == kept
    assert _tokens(tiny, PROMPTS, 2, 1.0, 6) == kept


def test_a_peft_model_keeps_only_the_last_logits(tiny_model_name):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(load_model(tiny_model_name).model, LoraConfig(r=2, target_modules="all-linear"))
    assert generation.last_logits_only(model) == {"logits_to_keep": 1}  # read from the model PEFT wraps
    out = model(input_ids=torch.tensor([PROMPTS[1]]), logits_to_keep=1)  # and passed through to it
    assert out.logits.shape == (1, 1, model.config.vocab_size)
