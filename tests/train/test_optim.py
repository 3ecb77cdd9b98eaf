"""AdamW with bfloat16 moments (train.optimizer_state_dtype): what it stores and how close it stays."""

import pytest
import torch

from tunesmith.train.optim import BF16StateAdamW, round_stochastically


def test_stochastic_rounding_keeps_the_mean_where_rounding_to_nearest_loses_it():
    # 1 + 1/300 lies between two bfloat16 neighbours (1 and 1 + 1/128): nearest rounding gives 1.
    value = torch.full((200_000,), 1 + 1 / 300)
    out = torch.empty_like(value, dtype=torch.bfloat16)
    round_stochastically(value.clone(), out, torch.Generator().manual_seed(0))
    assert set(out.float().unique().tolist()) == {1.0, 1 + 1 / 128}
    assert out.float().mean().item() == pytest.approx(1 + 1 / 300, rel=1e-5)
    assert value.to(torch.bfloat16).float().mean().item() == 1.0


def test_moments_are_bfloat16_and_the_second_one_still_follows_small_gradients():
    """beta2 = 0.999 with a constant gradient: v_t = g^2 (1 - 0.999^t). Rounded to nearest, 0.999 v
    rounds back to v once v is large enough, and v stalls far below that."""
    weight = torch.nn.Parameter(torch.zeros(10_000))
    optimizer = BF16StateAdamW([weight], lr=0.0, weight_decay=0.0)
    for _ in range(1000):
        weight.grad = torch.full_like(weight, 0.5)
        optimizer.step()
    state = optimizer.state[weight]
    assert state["exp_avg"].dtype == state["exp_avg_sq"].dtype == torch.bfloat16
    expected = 0.25 * (1 - 0.999**1000)
    assert state["exp_avg_sq"].float().mean().item() == pytest.approx(expected, rel=1e-3)


def test_updates_stay_close_to_torch_adamw_and_resume_draws_the_same_noise():
    torch.manual_seed(0)
    start, target = torch.randn(200, 50), torch.randn(200, 50)

    def run(optimizer_class, steps, state=None, **kwargs):
        weight = torch.nn.Parameter(start.clone() if state is None else state[0].clone())
        optimizer = optimizer_class([weight], lr=1e-3, weight_decay=0.01, **kwargs)
        if state is not None:
            optimizer.load_state_dict(state[1])
        for _ in range(steps):
            optimizer.zero_grad()
            ((weight - target) ** 2).sum().backward()
            optimizer.step()
        return weight.detach(), optimizer.state_dict()

    reference, _ = run(torch.optim.AdamW, 200)
    ours, _ = run(BF16StateAdamW, 200)
    moved = (reference - start).abs().mean()
    assert (ours - reference).abs().mean() <= 0.01 * moved
    halfway = run(BF16StateAdamW, 100)
    resumed, state = run(BF16StateAdamW, 100, state=halfway)
    assert torch.equal(resumed, ours)
    assert {v.dtype for s in state["state"].values() for k, v in s.items() if k != "step"} == {torch.bfloat16}
