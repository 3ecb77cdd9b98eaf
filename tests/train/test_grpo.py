import json
import math
import shutil

import pytest
import torch

from tunesmith.train.grpo import ADVANTAGE_EPS, group_advantages, reduce_loss, token_losses


def plain_advantages(rewards: list[float], group_size: int, scale: bool) -> list[float]:
    out = []
    for start in range(0, len(rewards), group_size):
        group = rewards[start : start + group_size]
        mean = sum(group) / len(group)
        std = math.sqrt(sum((r - mean) ** 2 for r in group) / (len(group) - 1))
        out += [(r - mean) / (std + ADVANTAGE_EPS) if scale else r - mean for r in group]
    return out


@pytest.mark.parametrize(
    ("rewards", "group_size", "scale"),
    [
        ([1.0, 0.0, 0.0, 1.0], 4, True),
        ([1.0, 0.0, 0.0, 1.0], 2, True),
        ([0.3, 0.9, 0.1, 0.5, 0.5, 0.5], 3, True),  # second group: all equal -> advantages 0
        ([0.3, 0.9, 0.1, 0.5, 0.5, 0.7], 3, False),
        ([2.5, -1.0, 0.25, 7.0], 4, False),
    ],
)
def test_group_advantages_match_a_plain_implementation(rewards, group_size, scale):
    got = group_advantages(torch.tensor(rewards, dtype=torch.float64), group_size, scale)
    assert got.tolist() == pytest.approx(plain_advantages(rewards, group_size, scale), abs=1e-6)


def plain_token_loss(logp, old, ref, advantage, eps, beta):
    ratio = math.exp(logp - old)
    surrogate = min(ratio * advantage, min(max(ratio, 1 - eps), 1 + eps) * advantage)
    kl = math.exp(ref - logp) - (ref - logp) - 1 if ref is not None else 0.0
    return -surrogate + beta * kl, kl


@pytest.mark.parametrize(
    ("logps", "old", "ref", "advantages", "eps", "beta"),
    [
        ([-1.0, -2.0, -0.5], [-1.0, -2.0, -0.5], [-1.2, -1.5, -0.5], [1.0, -0.5, 2.0], 0.2, 0.04),  # ratio 1
        ([-0.5, -2.5, -0.1], [-1.0, -2.0, -0.5], [-1.2, -1.5, -0.5], [1.0, -0.5, 2.0], 0.2, 0.1),  # clipped
        ([-0.5, -2.5, -0.1], [-1.0, -2.0, -0.5], None, [-1.0, 0.5, -2.0], 0.1, 0.04),  # no reference
    ],
)
def test_clipped_loss_matches_a_plain_implementation(logps, old, ref, advantages, eps, beta):
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    loss, kl, clipped = token_losses(t(logps), t(old), t(ref) if ref else None, t(advantages), eps, beta)
    plain = [
        plain_token_loss(lp, o, r, a, eps, beta)
        for lp, o, r, a in zip(logps, old, ref or [None] * 3, advantages, strict=True)
    ]
    assert loss.tolist() == pytest.approx([p[0] for p in plain], abs=1e-6)
    assert kl.tolist() == pytest.approx([p[1] for p in plain], abs=1e-6)
    # the clip binds where the ratio left [1 - eps, 1 + eps] on the side the advantage rewards
    expected_clip = [
        float(min(max(math.exp(lp - o), 1 - eps), 1 + eps) * a < math.exp(lp - o) * a)
        for lp, o, a in zip(logps, old, advantages, strict=True)
    ]
    assert clipped.tolist() == expected_clip


def test_ratio_one_gives_the_policy_gradient_of_the_advantage():
    """One update per rollout: d loss / d logp = -A (+ beta's KL term), the clip never binds."""
    logps = torch.tensor([-1.0, -2.0], dtype=torch.float64, requires_grad=True)
    advantages = torch.tensor([0.7, -1.3], dtype=torch.float64)
    loss, _, clipped = token_losses(logps, logps.detach(), None, advantages, 0.2, 0.0)
    loss.sum().backward()
    assert logps.grad.tolist() == pytest.approx([-0.7, 1.3], abs=1e-12)
    assert clipped.sum().item() == 0


@pytest.mark.parametrize(
    ("how", "expected"),
    [
        # tokens of answers 0 (3 tokens) and 1 (1 token); the step holds 8 tokens in 4 answers
        ("token", (1 + 2 + 3 + 4) / 8),
        ("sequence", ((1 + 2 + 3) / 3 + 4 / 1) / 4),
    ],
)
def test_loss_normalisation(how, expected):
    losses = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    owner, lengths = torch.tensor([0, 0, 0, 1]), torch.tensor([3, 1])
    assert reduce_loss(losses, owner, lengths, 8, 4, how).item() == pytest.approx(expected, abs=1e-12)


GRADER = {
    "type": "string_check",
    "name": "yes",
    "input": "{{sample.output_text}}",
    "reference": "Yes",
    "operation": "ilike",
}


@pytest.mark.parametrize(
    ("method", "rl", "error"),
    [
        ({"name": "grpo"}, {}, "method.name=grpo needs rl.grader"),
        ({"name": "lora"}, {"group_size": 8}, "the rl section only applies to method.name=grpo"),
        ({"name": "grpo"}, {"grader": GRADER, "group_size": 1}, "rl.group_size"),
        ({"name": "grpo", "beta": 0.5}, {"grader": GRADER}, "method.beta only applies to method.name=dpo"),
        ({"name": "grpo"}, {"grader": GRADER}, None),
        ({"name": "grpo", "weights": "full"}, {"grader": GRADER, "beta": 0.0}, None),
    ],
)
def test_grpo_config(method, rl, error):
    from tunesmith.config import config_from_dict
    from tunesmith.errors import TunesmithError

    raw = {"data": {"train": "prompts.jsonl"}, "method": method, "rl": rl}
    if error is None:
        cfg = config_from_dict(raw)
        assert cfg.method.lora == (method.get("weights", "lora") == "lora")
    else:
        with pytest.raises(TunesmithError, match=error):
            config_from_dict(raw)


def _write_prompts(path, n: int):
    rows = [
        {"messages": [{"role": "user", "content": f"Say the number {i}."}], "answer": f"The number is {i}."}
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


SIMILARITY = {
    "type": "text_similarity",
    "name": "close",
    "input": "{{sample.output_text}}",
    "reference": "{{item.answer}}",
    "evaluation_metric": "fuzzy_match",
    "pass_threshold": 0.2,
}


@pytest.fixture
def grpo_config(tiny_config, tmp_path):
    def make(out_dir, **rl):
        return tiny_config(
            out_dir=str(out_dir),
            data={
                "train": str(_write_prompts(tmp_path / "train.jsonl", 4)),
                "validation": str(_write_prompts(tmp_path / "validation.jsonl", 1)),
            },
            method={"name": "grpo", "dropout": 0.0},
            train={"max_steps": 3, "batch_size": 2, "eval_every": 2, "save_every": 2, "log_every": 1, "lr": 5e-3},
            eval={"samples": 0},
            rl={"grader": SIMILARITY, "group_size": 2, "max_new_tokens": 4, "rollout_batch_size": 4, **rl},
        )

    return make


def _rows(out_dir):
    timings = (
        "tokens_per_second",
        "mfu",
        "peak_rss_mb",
        "peak_rss_mb_mean",
        "train_rollout_seconds",
        "train_training_seconds",
    )
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in timings} for r in rows]


def test_a_grpo_run_writes_reward_kl_and_clip_fraction_and_resumes_exactly(grpo_config, tmp_path):
    from tunesmith.train.recipe import train

    out = tmp_path / "straight"
    summary = train(grpo_config(out))
    assert summary.steps == 3
    rows = _rows(out)
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert {"val_reward", "val_pass_rate", "val_loss", "val_answer_length"} <= rows[0].keys()
    assert rows[0]["val_loss"] == pytest.approx(-rows[0]["val_reward"])
    for row in rows[1:]:
        for key in ("train_reward", "train_reward_std", "train_pass_rate", "train_kl", "train_clip_fraction"):
            assert key in row
        assert 0.0 <= row["train_reward"] <= 1.0
        assert 0.0 < row["train_answer_length"] <= 4
        assert row["train_clip_fraction"] == 0.0  # one update per rollout: the ratio is 1
        assert row["train_kl"] >= 0.0
    assert rows[1]["train_kl"] == 0.0  # step 1 samples from the base: policy == reference
    assert rows[3]["train_kl"] > 0.0
    assert (out / "adapter").is_dir()
    timed = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][1:]
    assert all(r["train_rollout_seconds"] > 0 and r["train_training_seconds"] > 0 for r in timed)

    # resume from the step-2 checkpoint of a copy: step 3 must be the same to the last digit
    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    for name in ("adapter", "merged", "summary.json"):
        target = resumed / name
        shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    train(grpo_config(resumed), resume=True)
    assert _rows(resumed) == rows


def _policy(cfg, tiny_model_name):
    """The tiny model with the config's method attached (seeded), and a GRPO objective over it."""
    from tunesmith.models import load_model
    from tunesmith.train.grpo import GRPOObjective
    from tunesmith.train.recipe import attach_method

    loaded = load_model(tiny_model_name)
    torch.manual_seed(0)
    model = attach_method(loaded.model, cfg)
    return model, GRPOObjective(cfg, loaded.tokenizer.pad_token_id, torch.device("cpu"), loaded.tokenizer)


@pytest.mark.parametrize("weights", ["lora", "full"])
def test_the_reference_is_the_base_model(grpo_config, tmp_path, tiny_model_name, weights):
    """LoRA: the same model with its adapter disabled; full: a frozen copy taken before training."""
    from tunesmith.models import load_model
    from tunesmith.train.rollout import RLPrompt

    cfg = grpo_config(tmp_path / "run")
    cfg.method.weights = weights
    model, objective = _policy(cfg, tiny_model_name)
    objective.setup(model, None)
    with torch.no_grad():  # training moved the weights away from the base
        for name, p in model.named_parameters():
            if p.requires_grad and ("lora_B" in name or weights == "full"):
                p.add_(torch.randn_like(p) * 0.05)
    prompts = [RLPrompt(1, [1, 4093, 198], {}), RLPrompt(2, [1, 1780, 314, 260], {})]
    batch = objective._answers_batch(prompts, [[3575, 282], [2], [3575], [282, 2, 11]])
    base = load_model(tiny_model_name).model.eval()
    model.eval()
    expected = objective._token_logps(base, batch)
    reference = objective._reference_logps(model, batch)
    assert reference.shape == (7,)  # every answer token
    assert (reference - expected).abs().max().item() < 1e-5
    assert (objective._token_logps(model, batch) - expected).abs().max().item() > 1e-3


def test_packed_groups_score_each_answer_as_padded_rows_do(grpo_config, tmp_path, tiny_model_name):
    """A group's answers share one pass over their prompt: fewer tokens, the same log-probs and gradients."""
    from tunesmith.train.rollout import RLPrompt

    prompts = [RLPrompt(1, [1, 4093, 198, 28, 9], {}), RLPrompt(2, [1, 1780, 314, 260], {})]
    answers = [[3575, 282], [2], [3575, 7, 7, 7, 7], [282, 2, 11]]
    scored = {}
    for packing in (True, False):
        cfg = grpo_config(tmp_path / "run")
        cfg.data.packing = packing
        model, objective = _policy(cfg, tiny_model_name)
        batch = objective._answers_batch(prompts, answers)
        logps = objective._token_logps(model, batch)
        logps.sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        scored[packing] = (batch.n_tokens, logps.detach(), grads)
    (packed_tokens, packed, packed_grads), (padded_tokens, padded, padded_grads) = scored[True], scored[False]
    # Padded: every answer with its whole prompt, 7 + 6 + 9 + 7. Packed: the shared BOS once, each
    # group's prompt but its last token once (3 + 2), then each answer after that last token.
    assert padded_tokens == 29 and packed_tokens == 1 + 3 + 2 + (3 + 2) + (6 + 4) == 21
    assert packed.shape == (11,)  # every answer token, in the same order
    assert (packed - padded).abs().max().item() < 1e-5
    assert packed_grads.keys() == padded_grads.keys() and packed_grads
    for name, grad in packed_grads.items():
        assert torch.allclose(grad, padded_grads[name], rtol=1e-4, atol=1e-6), name


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TOOL_LINE = {
    "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Paris?"}],
    "tools": [WEATHER],
    "city": "Paris",
}
CALLED = {"type": "string_check", "name": "called", "input": "{{sample.output_tools}}", "operation": "like"}


def _graded_config(tiny_config, tmp_path, lines, grader, **rl):
    path = tmp_path / "graded.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return tiny_config(
        data={"train": str(path), "validation": str(path)},
        method={"name": "grpo"},
        rl={"grader": grader, "group_size": 2, "max_new_tokens": 16, **rl},
    )


def test_a_prompt_with_tools_is_the_sft_prompt_offering_them(tiny_config, tmp_path, smol_tokenizer):
    from tunesmith.data.formats import read_chat
    from tunesmith.data.tokenize import IGNORE_INDEX, tokenize_chats
    from tunesmith.graders.load import load_grader
    from tunesmith.train.rollout import prepare_graded

    cfg = _graded_config(tiny_config, tmp_path, [TOOL_LINE], {**CALLED, "reference": "get_weather"})
    prompt = prepare_graded(cfg, load_grader(cfg.rl.grader), smol_tokenizer).train[0]
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    answered = {**TOOL_LINE, "messages": [*TOOL_LINE["messages"], {"role": "assistant", "tool_calls": [call]}]}
    chat, problems = read_chat(answered)
    assert problems == []
    ids, labels = tokenize_chats(smol_tokenizer, [chat])[0]
    first_trained = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
    assert prompt.input_ids == ids[:first_trained]
    assert '"name": "get_weather"' in smol_tokenizer.decode(prompt.input_ids)  # the tool is offered
    assert [t.name for t in prompt.tools] == ["get_weather"]


def test_a_grader_on_output_tools_gets_the_calls_read_from_the_answers(
    tiny_config, tmp_path, smol_tokenizer, monkeypatch
):
    """Rollout answers are read as the service reads them: a <tool_call> line is a call in sample.output_tools."""
    import tunesmith.train.rollout as rollout
    from tunesmith.graders import Context
    from tunesmith.graders.load import load_grader

    grader = {**CALLED, "reference": '"arguments": "{\\"city\\": \\"Paris\\"}"'}
    cfg = _graded_config(tiny_config, tmp_path, [TOOL_LINE], grader)
    prompt = rollout.prepare_graded(cfg, load_grader(cfg.rl.grader), smol_tokenizer).train[0]
    texts = ['<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>', "It is sunny."]
    seen = {}

    def answers(model, prompts, *args, copies=1, **kwargs):
        seen.update(prompts=prompts, copies=copies)
        return [smol_tokenizer(t, add_special_tokens=False).input_ids + [smol_tokenizer.eos_token_id] for t in texts]

    class Model(torch.nn.Linear):  # parameters (a device), a config; its answers come from `answers`
        config = type("Config", (), {"vocab_size": 49152})

    monkeypatch.setattr(rollout, "generate_tokens", answers)
    result = rollout.roll_out(Model(1, 1), smol_tokenizer, [prompt], load_grader(grader), Context(), cfg, 2)
    assert seen == {"prompts": [prompt.input_ids], "copies": 2}  # the prompt once, sampled twice
    assert result.rewards.tolist() == [1.0, 0.0]


def test_answers_are_held_to_the_lines_response_format(tiny_config, tmp_path, tiny_model_name):
    from tunesmith.graders import Context
    from tunesmith.graders.load import load_grader
    from tunesmith.models import load_model
    from tunesmith.train.rollout import prepare_graded, roll_out

    schema = {
        "type": "object",
        "properties": {"answer": {"enum": ["yes", "no"]}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    line = {
        "messages": [{"role": "user", "content": "Is Paris in France?"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "verdict", "schema": schema}},
    }
    grader = {"type": "string_check", "name": "yes", "input": "{{sample.output_json.answer}}", "operation": "eq"}
    grader["reference"] = "yes"
    cfg = _graded_config(tiny_config, tmp_path, [line], grader, group_size=4)
    loaded = load_model(tiny_model_name)
    prompt = prepare_graded(cfg, load_grader(grader), loaded.tokenizer).train[0]
    result = roll_out(loaded.model, loaded.tokenizer, [prompt], load_grader(grader), Context(), cfg, 4)
    answers = [json.loads(loaded.tokenizer.decode(a, skip_special_tokens=True)) for a in result.answers]
    assert all(a["answer"] in ("yes", "no") for a in answers)
    assert result.rewards.tolist() == [float(a["answer"] == "yes") for a in answers]
