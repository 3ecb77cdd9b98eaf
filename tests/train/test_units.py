"""Schedules, early stopping, atomic writes and loss normalisation."""

import pytest
import torch

from tunesmith.data.prepare import prepare_data
from tunesmith.models import load_model
from tunesmith.paths import atomic_file, write_dir_atomic
from tunesmith.train.distributed import Dist
from tunesmith.train.loss import labelled_loss
from tunesmith.train.objective import SFTObjective
from tunesmith.train.optim import lr_factor
from tunesmith.train.recipe import StepBatches, attach_method
from tunesmith.train.stopping import EarlyStopping


@pytest.mark.parametrize(
    "step, kind, expected",
    [
        (0, "cosine", 1 / 5),  # warm-up: (step + 1) / (warmup + 1), never a zero-lr update
        (3, "cosine", 4 / 5),
        (4, "cosine", 1.0),  # warm-up done: peak
        (9, "cosine", 0.5),  # half-way through decay (4 + 10 / 2)
        (14, "cosine", 0.0),
        (9, "linear", 0.5),
        (14, "linear", 0.0),
        (14, "constant", 1.0),
        (20, "cosine", 0.0),  # past the end stays at the floor
    ],
)
def test_lr_schedule(step, kind, expected):
    assert lr_factor(step, warmup_steps=4, total_steps=14, kind=kind) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize(
    "losses, patience, min_delta, stops_after, best",
    [
        ([3.0, 2.0, 1.0, 0.5], 2, 0.0, None, 3),  # keeps improving
        ([3.0, 2.0, 2.5, 2.6], 2, 0.0, 3, 1),  # two evaluations without improvement
        ([3.0, 2.95, 2.9, 2.85], 2, 0.1, 2, 0),  # gains below min_delta do not count
        ([3.0, 3.0, 3.0], None, 0.0, None, 0),  # no patience: never stops, still tracks best
    ],
)
def test_early_stopping(losses, patience, min_delta, stops_after, best):
    stopper = EarlyStopping(patience, min_delta)
    stopped = None
    for i, loss in enumerate(losses):
        stopper.update(i, loss)
        if stopper.should_stop:
            stopped = i
            break
    assert stopped == stops_after
    assert stopper.best_step == best


def test_atomic_file_keeps_the_old_content_when_writing_fails(tmp_path):
    target = tmp_path / "state.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_file(target, "w") as fh:
        fh.write("half")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_atomic_folder_is_all_or_nothing(tmp_path):
    def fill_then_crash(folder):
        (folder / "weights").write_text("partial")
        raise RuntimeError("crash")

    with pytest.raises(RuntimeError):
        write_dir_atomic(tmp_path / "step-000010", fill_then_crash)
    assert list(tmp_path.iterdir()) == []
    write_dir_atomic(tmp_path / "step-000010", lambda f: (f / "weights").write_text("v1"))
    write_dir_atomic(tmp_path / "step-000010", lambda f: (f / "weights").write_text("v2"))
    assert (tmp_path / "step-000010/weights").read_text() == "v2"
    assert [p.name for p in tmp_path.iterdir()] == ["step-000010"]


def _step_gradients(cfg, model, data, pad_id):
    model.zero_grad()
    objective = SFTObjective(cfg, pad_id, torch.device("cpu"))
    step = StepBatches(data.train, cfg, objective, steps_per_epoch=1, dist=Dist())(0)
    batches, total = step.batches, step.label_tokens
    assert total == sum(b.n_label_tokens for b in batches) == objective.counts(step.items)[0]
    for batch in batches:
        (labelled_loss(model, batch, 64).loss_sum / total).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_loss_is_normalised_over_the_whole_accumulated_step(tiny_config):
    """4 examples as 1 x 4 or as 4 micro-batches of 1: the same gradient, since every label token
    weighs the same (per-micro-batch means would overweight short examples)."""
    one = tiny_config(train={"batch_size": 4, "grad_accum": 1}, method={"dropout": 0.0})
    four = tiny_config(train={"batch_size": 1, "grad_accum": 4}, method={"dropout": 0.0})
    loaded = load_model(one.model)
    torch.manual_seed(0)
    model = attach_method(loaded.model, one)
    for p in model.parameters():  # LoRA B starts at zero; give the adapter a non-trivial state
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.02)
    data = prepare_data(one.data, loaded.tokenizer)
    pad = loaded.tokenizer.pad_token_id
    a = _step_gradients(one, model, data, pad)
    b = _step_gradients(four, model, data, pad)
    assert all(torch.allclose(a[n], b[n], rtol=1e-4, atol=1e-7) for n in a)
