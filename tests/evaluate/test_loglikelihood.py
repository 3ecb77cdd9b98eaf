import pytest
import torch

from tunesmith.evaluate.loglikelihood import continuation_logprobs, label_logprobs
from tunesmith.generation import Sampling, generate, stream

TEXTS = ["Hello there, how are you doing today my friend?", "Hi", "The quick brown fox jumps"]


def _ids(tokenizer, texts):
    return [tokenizer(t, add_special_tokens=False).input_ids for t in texts]


@pytest.mark.parametrize("batch_size", [2, 3])
def test_left_padded_batches_give_the_unbatched_greedy_output(tiny, batch_size):
    prompts = _ids(tiny.tokenizer, TEXTS)
    batched = generate(tiny.model, tiny.tokenizer, prompts, max_new_tokens=6, batch_size=batch_size)
    alone = [generate(tiny.model, tiny.tokenizer, [p], max_new_tokens=6, batch_size=1) for p in prompts]
    assert batched.texts == [g.texts[0] for g in alone]
    assert batched.new_tokens == [6, 6, 6]
    assert batched.tokens_per_second > 0


@pytest.mark.parametrize("max_new_tokens", [1, 5])
def test_generation_stops_at_the_end_of_turn_token(tiny, prefer_tokens, max_new_tokens):
    prefer_tokens([tiny.tokenizer.eos_token_id])
    out = generate(tiny.model, tiny.tokenizer, _ids(tiny.tokenizer, TEXTS), max_new_tokens=max_new_tokens, batch_size=3)
    # The end-of-turn token is counted as produced but not decoded into the text.
    assert out.new_tokens == [1, 1, 1]
    assert out.texts == ["", "", ""]


def test_sampling_is_seeded(tiny):
    prompts = _ids(tiny.tokenizer, TEXTS)
    runs = [
        generate(tiny.model, tiny.tokenizer, prompts, max_new_tokens=5, batch_size=3, temperature=1.5, seed=s).texts
        for s in (7, 7, 8)
    ]
    assert runs[0] == runs[1] != runs[2]


def test_generation_leaves_the_global_rng_alone(tiny):
    """A recipe generates base samples after applying train.seed: training must keep that stream."""
    torch.manual_seed(1234)
    expected = torch.rand(4)
    torch.manual_seed(1234)
    generate(tiny.model, tiny.tokenizer, _ids(tiny.tokenizer, TEXTS), max_new_tokens=3, batch_size=3, temperature=1.0)
    assert torch.equal(torch.rand(4), expected)


def test_continuation_logprobs_match_a_full_forward_pass(tiny):
    prompts = _ids(tiny.tokenizer, TEXTS)
    continuations = [[5, 6, 7], [8], [9, 10]]
    got = continuation_logprobs(tiny.model, tiny.tokenizer.pad_token_id, prompts, continuations, batch_size=2)
    for (total, count), prompt, cont in zip(got, prompts, continuations, strict=True):
        with torch.no_grad():
            logits = tiny.model(torch.tensor([prompt + cont])).logits[0].float()
        logprobs = torch.log_softmax(logits, dim=-1)
        expected = sum(logprobs[len(prompt) - 1 + j, token].item() for j, token in enumerate(cont))
        assert count == len(cont)
        assert total == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("scorer", [continuation_logprobs, label_logprobs])
def test_scoring_needs_a_prompt(tiny, scorer):
    with pytest.raises(ValueError, match="at least one token"):
        scorer(tiny.model, 0, [[]], [[1]], batch_size=1)


def test_label_logprobs_need_label_tokens(tiny):
    with pytest.raises(ValueError, match="every label"):
        label_logprobs(tiny.model, 0, [[1]], [[2], []], batch_size=1)


@pytest.mark.parametrize(
    ("labels", "batch_size"),
    [
        ([[5, 6, 7, 2], [8, 2], [9, 10, 2]], 3),  # different lengths, one batch with left padding
        ([[5, 6, 7, 2], [8, 2], [9, 10, 2]], 2),  # a batch of two and a batch of one
        ([[5], [8], [11]], 3),  # single-token labels: scored from the prompt alone
        ([[12, 13]], 1),  # one label
    ],
)
def test_label_logprobs_match_scoring_each_pair_separately(tiny, labels, batch_size):
    prompts = _ids(tiny.tokenizer, TEXTS)
    pad = tiny.tokenizer.pad_token_id
    got = label_logprobs(tiny.model, pad, prompts, labels, batch_size=batch_size)
    pairs = continuation_logprobs(
        tiny.model, pad, [p for p in prompts for _ in labels], [ids for _ in prompts for ids in labels], batch_size=1
    )
    assert [count for row in got for _, count in row] == [count for _, count in pairs]
    assert [total for row in got for total, _ in row] == pytest.approx([total for total, _ in pairs], abs=1e-4)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_the_service_stream_and_batched_generation_agree(tiny, temperature):
    """One stack: `tunesmith generate`, evaluation and the service answer a prompt the same way."""
    prompt = _ids(tiny.tokenizer, TEXTS)[0]
    batched = generate(
        tiny.model, tiny.tokenizer, [prompt], max_new_tokens=6, batch_size=1, temperature=temperature, seed=5
    )
    pieces = list(stream(tiny.model, tiny.tokenizer, prompt, Sampling(6, temperature, seed=5)))
    assert "".join(p.text for p in pieces) == batched.texts[0]
    assert pieces[-1].completion_tokens == batched.new_tokens[0] == 6
