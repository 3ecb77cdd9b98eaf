"""DPO: the loss and its gradient against a plain implementation, the reference of a LoRA run
(adapter disabled) against the base model, and the packed pair row against separate rows."""

import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model

from tunesmith.config import config_from_dict
from tunesmith.data.batching import make_batch, shareable_prefix
from tunesmith.data.formats import Message
from tunesmith.data.preference import PreferencePair, tokenize_pair
from tunesmith.data.tokenize import IGNORE_INDEX
from tunesmith.kernels.fused_lora import fuse_lora
from tunesmith.kernels.lean import LeanStorage
from tunesmith.models import load_model
from tunesmith.train.dpo import DPOObjective, pair_batch, reference_logps, sequence_logps
from tunesmith.train.objective import evaluate_model

PAIRS = [
    PreferencePair(1, (Message("user", "Name a colour."),), "Blue.", "I will not answer that."),
    PreferencePair(
        2,
        (
            Message("system", "Be brief."),
            Message("user", "What is 2 + 2?"),
            Message("assistant", "Four.", 0),
            Message("user", "And 3 + 3?"),
        ),
        "Six.",
        "Seven, or maybe eight; arithmetic is hard.",
    ),
    PreferencePair(3, (Message("user", "Say hello in French."),), "Bonjour !", "Hello."),
]


@pytest.fixture(scope="module")
def pairs(smol_tokenizer):
    return [tokenize_pair(smol_tokenizer, p, 96) for p in PAIRS]


def _config(tiny_model_name, **method):
    return config_from_dict(
        {
            "model": tiny_model_name,
            "data": {"train": "unused.jsonl"},
            "method": {"name": "dpo", **method},
            "train": {"dtype": "float32", "batch_size": 4},
        }
    )


def _lora(name: str, random_b: bool = True):
    torch.manual_seed(0)
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear", init_lora_weights=not random_b)
    return get_peft_model(load_model(name).model, lora).train()


def _plain_logps(model, pairs) -> torch.Tensor:
    """[pairs, 2] summed answer log-probs, one sequence at a time through model(...).logits."""
    out = []
    for pair in pairs:
        row = []
        for side in (pair.chosen, pair.rejected):
            logits = model(input_ids=torch.tensor([side.input_ids]), use_cache=False).logits[0, :-1].float()
            targets = torch.tensor(side.labels[1:])
            keep = targets != IGNORE_INDEX
            row.append(logits.log_softmax(-1)[keep].gather(1, targets[keep, None]).sum())
        out.append(torch.stack(row))
    return torch.stack(out)


def _grads(model) -> dict[str, torch.Tensor]:
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


@pytest.mark.parametrize(
    "weights, packing, sft_weight",
    [
        ("lora", True, 0.0),
        ("lora", False, 0.0),
        ("lora", True, 0.5),
        ("full", True, 0.0),
        ("full", False, 0.5),
    ],
)
def test_dpo_loss_and_gradient_equal_a_plain_implementation(tiny_model_name, pairs, weights, packing, sft_weight):
    beta = 0.5
    cfg = _config(tiny_model_name, weights=weights, beta=beta, sft_weight=sft_weight)
    cfg.data.packing = packing
    objective = DPOObjective(cfg, 2, torch.device("cpu"))
    if weights == "lora":
        model = _lora(tiny_model_name)
        fuse_lora(model)
        reference = _plain_logps(load_model(tiny_model_name).model, pairs).detach()
        data = SimpleNamespace(train=list(pairs), validation=[])
    else:
        model = load_model(tiny_model_name).model.requires_grad_(True).train()
        reference = _plain_logps(model, pairs).detach()
        data = SimpleNamespace(train=list(pairs), validation=[])
        objective.setup(model, data)  # stores the reference log-probs with the pairs
        with torch.no_grad():  # then the policy moves away from the reference
            torch.manual_seed(1)
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.02)
    # A plain DPO: -log sigmoid(beta * (policy and reference margins)), mean over pairs.
    policy = _plain_logps(model, pairs)
    margins = (policy[:, 0] - reference[:, 0]) - (policy[:, 1] - reference[:, 1])
    plain = -F.logsigmoid(beta * margins).mean()
    chosen_tokens = sum(sum(t != IGNORE_INDEX for t in p.chosen.labels[1:]) for p in pairs)
    plain = plain - sft_weight * policy[:, 0].sum() / chosen_tokens
    plain.backward()
    expected = _grads(model)

    batch = objective.batch(data.train)
    objective.start_step(data.train)
    loss, sums = objective.forward(model, batch)
    loss.backward()
    got = _grads(model)

    assert abs(loss.item() - plain.item()) <= 1e-5
    assert got.keys() == expected.keys() and expected
    for name, grad in expected.items():
        assert (got[name] - grad).abs().max() <= 1e-5, name
    assert max(g.abs().max() for g in expected.values()) > 1e-3  # the comparison is not of zeros
    metrics = objective.metrics(sums.tolist(), objective.counts(data.train), "train")
    assert metrics["train_loss"] == pytest.approx(-F.logsigmoid(beta * margins).mean().item(), abs=1e-5)
    assert metrics["train_reward_accuracy"] == pytest.approx((margins > 0).float().mean().item())
    assert metrics["train_reward_margin"] == pytest.approx(beta * margins.mean().item(), abs=1e-5)
    assert metrics["train_chosen_logps"] == pytest.approx(policy[:, 0].mean().item(), abs=1e-4)
    assert metrics["train_rejected_logps"] == pytest.approx(policy[:, 1].mean().item(), abs=1e-4)
    assert ("train_chosen_nll" in metrics) == (sft_weight > 0)


@pytest.mark.parametrize("batch_size, sft_weight", [(2, 0.0), (1, 0.5)])
def test_pairs_split_across_processes_give_one_process_gradient(tiny_model_name, pairs, batch_size, sft_weight):
    """What DDP computes (the mean over processes of each one's loss x world_size), done here rank by
    rank, equals one process's gradient with the same step. batch_size 1: a step of one pair leaves
    one process (and one micro-batch of the single process) empty: it must add nothing."""
    from tunesmith.train.distributed import Dist, LossModule
    from tunesmith.train.recipe import StepBatches

    cfg = _config(tiny_model_name, sft_weight=sft_weight)
    objective = DPOObjective(cfg, 2, torch.device("cpu"))
    module = LossModule(_lora(tiny_model_name), objective)
    items = list(pairs[: 2 * batch_size - 1])

    def gradient(world_size, grad_accum):
        step_cfg = cfg.model_copy(deep=True)
        step_cfg.train.batch_size, step_cfg.train.grad_accum = batch_size, grad_accum
        losses = []
        for rank in range(world_size):
            step = StepBatches(items, step_cfg, objective, 1, Dist(rank, world_size))(0)
            objective.start_step(step.items)
            for batch in step.batches:
                loss, _ = module(batch)
                (loss * world_size).backward()
                losses.append(loss.item())
        return {n: g / world_size for n, g in _grads(module).items()}, sum(losses)

    one, one_loss = gradient(1, 2)
    two, two_loss = gradient(2, 1)
    assert one_loss == pytest.approx(two_loss, abs=1e-6)
    assert one.keys() == two.keys() and one
    assert all(torch.allclose(one[n], two[n], rtol=1e-5, atol=1e-8) for n in one)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_adapter_disabled_gives_exactly_the_base_models_logps(tiny_model_name, pairs, dtype):
    """The LoRA reference: the trained model (fused LoRA, lean bf16 storage where it applies) with
    its adapter switched off must be the base model bit for bit, not approximately."""
    batch = make_batch([s for p in pairs for s in (p.chosen, p.rejected)], 2, True)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)

    base = load_model(tiny_model_name).model.eval()
    base.requires_grad_(False)
    if dtype == torch.bfloat16:
        LeanStorage(base, dtype)
    with torch.no_grad(), autocast:
        expected = sequence_logps(base, batch, 2 * len(pairs), 1024)

    model = _lora(tiny_model_name).eval()
    if dtype == torch.bfloat16:
        LeanStorage(model, dtype)
    fuse_lora(model)
    with autocast:
        got = reference_logps(model, batch, 2 * len(pairs), 1024)
        with torch.no_grad():
            tuned = sequence_logps(model, batch, 2 * len(pairs), 1024)
    assert torch.equal(got, expected)
    assert not torch.allclose(tuned, expected)  # the adapter is real, and on again afterwards


def test_sides_sharing_a_packed_row_and_their_prompt_give_the_logps_of_separate_rows(tiny_model_name, pairs):
    """One row holds what all pairs begin with once, then each pair's prompt once (all but its
    last token, which predicts each answer's first), then both answers."""
    batch = pair_batch(pairs, 2, True).sequences
    sides = [s for p in pairs for s in (p.chosen, p.rejected)]
    common = shareable_prefix(sides)
    prompts = [shareable_prefix([p.chosen, p.rejected]) for p in pairs]
    answers = [min(i for i, t in enumerate(p.chosen.labels) if t != IGNORE_INDEX) for p in pairs]
    assert 0 < common < min(prompts) and prompts == [a - 1 for a in answers]
    assert batch.n_tokens == sum(len(s.input_ids) for s in sides) - sum(prompts) - (len(pairs) - 1) * common
    assert batch.parents[:4] == [-1, 0, 1, 1]  # common start, the first pair's prompt, its two answers
    model = load_model(tiny_model_name).model.eval()
    with torch.no_grad():
        shared = sequence_logps(model, batch, 2 * len(pairs), 1024)
        alone = [
            sequence_logps(model, make_batch([side], 2, False), 1, 1024)[0]
            for p in pairs
            for side in (p.chosen, p.rejected)
        ]
    assert (shared - torch.stack(alone)).abs().max() <= 1e-4
    assert (shared < 0).all()


def test_a_fresh_adapter_starts_at_log_2(tiny_model_name, pairs):
    """B = 0 at initialisation: the policy is the reference, every margin 0, the loss log 2."""
    objective = DPOObjective(_config(tiny_model_name), 2, torch.device("cpu"))
    model = _lora(tiny_model_name, random_b=False)
    fuse_lora(model)
    metrics = evaluate_model(model, objective, pairs, objective.cfg)
    assert metrics["val_loss"] == pytest.approx(math.log(2), abs=1e-7)
    assert metrics["val_reward_margin"] == 0.0 and metrics["val_reward_accuracy"] == 0.0


@pytest.mark.parametrize("weights", ["lora", "full"])
def test_dpo_run_learns_the_preference_and_logs_its_metrics(make_tiny_config, write_pairs, tmp_path, weights):
    from tunesmith.train.recipe import train

    cfg = make_tiny_config(
        tmp_path / "run",
        data={
            "train": str(write_pairs(tmp_path / "train.jsonl", 32, openai=True)),
            "validation": str(write_pairs(tmp_path / "val.jsonl", 8, openai=False)),
        },
        method={"name": "dpo", "weights": weights, "beta": 0.5, "dropout": 0.0},
        train={"max_steps": 12, "lr": 1e-2 if weights == "lora" else 1e-3, "eval_every": 4, "log_every": 4},
    )
    summary = train(cfg)
    rows = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    first, last = rows[0], rows[-1]
    assert first["step"] == 0 and first["val_loss"] == pytest.approx(math.log(2), abs=1e-6)
    for name in ("loss", "reward_accuracy", "reward_margin", "chosen_logps", "rejected_logps"):
        assert f"train_{name}" in last and f"val_{name}" in last
    assert last["val_reward_accuracy"] > 0.5 and last["val_reward_margin"] > 0
    assert summary.best_val_loss < math.log(2)
    assert (tmp_path / "run/adapter").is_dir() == (weights == "lora")
    assert (tmp_path / "run/merged/config.json").is_file()
    if weights == "lora":
        _check_preference_eval(cfg, write_pairs, tmp_path)


def _check_preference_eval(cfg, write_pairs, tmp_path):
    """eval.task=preference on held-out pairs: base vs tuned, the implicit reward, 10 samples."""
    from tunesmith.evaluate.run import format_summary, run_evaluation

    cfg.data.test = str(write_pairs(tmp_path / "test.jsonl", 12, openai=False))
    cfg.eval.task, cfg.eval.max_new_tokens, cfg.eval.bootstrap_resamples = "preference", 3, 50
    result = run_evaluation(cfg, None, str(tmp_path / "eval"))
    base, tuned = result["variants"]["base"], result["variants"]["tuned"]
    assert result["items"] == 12 and len(result["samples"]) == 10
    assert tuned["logp_margin"]["value"] > base["logp_margin"]["value"]
    assert tuned["preference_accuracy"]["value"] == 100.0
    assert tuned["reward_accuracy"]["value"] > 50 and tuned["reward_margin"]["value"] > 0
    for m in (*base.values(), *tuned.values(), result["gain"]):
        assert m["low"] <= m["value"] <= m["high"]
    assert set(result["samples"][0]) == {"prompt", "preferred", "base", "tuned"}
    assert json.loads((tmp_path / "eval/eval.json").read_text())["variants"]["tuned"] == tuned
    assert "tuned - base preference accuracy" in (tmp_path / "eval/report.md").read_text()
    assert "implicit reward accuracy" in format_summary(result)


def test_dpo_on_supervised_data_and_sft_on_pairs_are_refused(make_tiny_config, write_pairs, tmp_path, small_e2e):
    from tunesmith.errors import TunesmithError
    from tunesmith.train.recipe import train

    cfg = make_tiny_config(tmp_path / "a", method={"name": "dpo", "dropout": 0.0})
    with pytest.raises(TunesmithError, match="method.name=dpo needs preference pairs"):
        train(cfg)
    pairs = str(write_pairs(tmp_path / "pairs.jsonl", 4, openai=False))
    cfg = make_tiny_config(tmp_path / "b", data={"train": pairs, "validation": pairs})
    with pytest.raises(TunesmithError, match="holds preference pairs: train on them with method.name=dpo"):
        train(cfg)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
