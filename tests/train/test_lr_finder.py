import json
import math

import pytest
import torch

from tunesmith.errors import TunesmithError
from tunesmith.train.lr_finder import MARGIN, lr_at, pick_lr, range_test


def test_range_test_restores_weights_and_random_state_exactly():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Dropout(0.5), torch.nn.Linear(16, 1))
    params = list(model.parameters())
    before = [p.detach().clone() for p in params]
    x, y = torch.randn(32, 8), torch.randn(32, 1)

    def train_step(step):
        loss = torch.nn.functional.mse_loss(model(x), y)  # dropout draws from the generator
        loss.backward()
        return loss.detach()

    state = torch.get_rng_state()
    curve = range_test(params, lambda lr: torch.optim.AdamW(params, lr=lr), train_step, steps=30)
    assert all(torch.equal(p, b) for p, b in zip(params, before, strict=True))
    assert all(p.grad is None for p in params)
    assert torch.equal(torch.get_rng_state(), state)
    # The test trained (the loss moved) and chose by the rule.
    assert curve.losses[0] != curve.losses[-1] and len(curve.lrs) <= 30
    assert curve.chosen == pytest.approx(curve.lrs[curve.smoothed.index(min(curve.smoothed))] / MARGIN)


def _curve(losses):
    return [lr_at(i, len(losses)) for i in range(len(losses))], losses


@pytest.mark.parametrize(
    ("losses", "best"),
    [
        ([5.0] * 3 + [4.0, 3.0, 2.0, 1.0, 1.0, 1.0, 3.0, 9.0, 30.0], 8),  # U shape: the smoothed minimum
        ([5.0, 4.0, 3.0, 2.0, 1.0], 4),  # still falling at the end: the last rate
        ([2.0, 1.0, 1.0, 40.0, 80.0, 0.01, 0.01], 2),  # after divergence, a lower loss is ignored
        ([2.0, 1.0, math.nan, 0.5], 1),  # a NaN ends the curve
    ],
)
def test_rule_a_tenth_of_the_smoothed_minimum(losses, best):
    lrs, losses = _curve(losses)
    chosen, smoothed = pick_lr(lrs, losses)
    assert chosen == pytest.approx(lrs[best] / 10)
    assert smoothed[0] == losses[0]  # bias-corrected: the first point is the first loss


def test_no_finite_loss_is_an_error():
    with pytest.raises(TunesmithError, match="set train.lr by hand"):
        pick_lr(*_curve([math.nan, math.nan]))


def test_lr_auto_run_saves_the_curve_and_the_chosen_rate(tiny_config, tmp_path, monkeypatch):
    import yaml

    from tunesmith.train import lr_finder
    from tunesmith.train.recipe import train

    monkeypatch.setattr(lr_finder, "STEPS", 6)  # the rule and the restore are tested above; here the wiring

    cfg = tiny_config(train={"lr": "auto", "max_steps": 2, "eval_every": 2, "save_every": 2, "log_every": 1})
    train(cfg)
    run = tmp_path / "run"
    found = json.loads((run / "lr_finder.json").read_text())
    assert found["rule"] == "lr at the minimum of the smoothed loss / 10"
    assert len(found["lrs"]) == len(found["losses"]) <= 6
    assert (run / "lr_finder.png").read_bytes().startswith(b"\x89PNG")
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["lr"] == found["chosen_lr"]
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["lr_auto"] == found["chosen_lr"]
