"""End-to-end runs of the training recipe on the tiny model."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from tunesmith.config import dump_config
from tunesmith.errors import TunesmithError
from tunesmith.models import load_model
from tunesmith.train.checkpoint import load_best
from tunesmith.train.recipe import attach_method, train


def _metrics(out_dir):
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def lora_run(make_tiny_config, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora") / "run"
    cfg = make_tiny_config(out, method={"dropout": 0.0})
    return cfg, train(cfg), out


def test_lora_run_lowers_validation_loss_and_writes_every_output(lora_run):
    cfg, summary, out = lora_run
    metrics = _metrics(out)
    # before training, every eval_every=5 steps, and at the epoch end (64 examples / 4 = 16 steps)
    assert [m["step"] for m in metrics if "val_loss" in m] == [0, 5, 10, 15, 16, 20]
    assert summary.best_val_loss < summary.initial_val_loss - 0.05
    train_lines = [m for m in metrics if "train_loss" in m]
    assert {"lr", "tokens_per_second", "mfu", "grad_norm", "peak_rss_mb", "epoch"} <= set(train_lines[0])
    assert 0 < train_lines[-1]["mfu"] < 1
    for name in (
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "merged/config.json",
        "merged/tokenizer.json",
        "config.yaml",
        "loss.png",
        "summary.json",
        "samples.json",
    ):
        assert (out / name).is_file(), name
    assert "quantization_config" not in json.loads((out / "merged/config.json").read_text())
    assert summary.trained_tokens == train_lines[-1]["trained_tokens"]


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_adapter_and_merged_model_give_tunesmiths_logits(lora_run, tiny_model_name):
    cfg, summary, out = lora_run
    ids = torch.tensor([[1, 4093, 198, 1780, 314, 260, 3575, 282, 2]])
    ours = attach_method(load_model(tiny_model_name).model, cfg).eval()
    load_best(out / "checkpoints/best", ours)
    peft = PeftModel.from_pretrained(load_model(tiny_model_name).model, out / "adapter").eval()
    merged = AutoModelForCausalLM.from_pretrained(out / "merged").eval()
    base = load_model(tiny_model_name).model.eval()
    expected = _logits(ours, ids)
    assert (_logits(peft, ids) - expected).abs().max() < 1e-5
    assert (_logits(merged, ids) - expected).abs().max() < 1e-4
    assert (_logits(base, ids) - expected).abs().max() > 1e-3  # training changed something


KILL_AFTER_CHECKPOINT = """
import os, signal, sys
import tunesmith.train.run as run
from tunesmith.config import load_config
from tunesmith.train.recipe import train
saved = run.save_checkpoint
def save_then_die(*args, **kwargs):
    saved(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)
run.save_checkpoint = save_then_die
train(load_config(sys.argv[1]))
"""


def _without_timings(rows):
    timings = ("tokens_per_second", "mfu", "peak_rss_mb", "peak_rss_mb_mean")
    return [{k: v for k, v in r.items() if k not in timings} for r in rows]


@pytest.mark.parametrize(
    "sections",
    [{}, {"method": {"name": "full"}, "train": {"lr": 1e-4, "optimizer_state_dtype": "bfloat16"}}],
    ids=["lora", "full-bf16-moments"],
)
def test_killed_and_resumed_run_ends_with_the_same_weights(tiny_config, tmp_path, sections):
    straight = tiny_config(out_dir=str(tmp_path / "straight"), **sections)
    train(straight)

    resumed = tiny_config(out_dir=str(tmp_path / "resumed"), **sections)
    config_file = tmp_path / "resumed.yaml"
    config_file.write_text(dump_config(resumed))
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER_CHECKPOINT, str(config_file)], capture_output=True)
    assert killed.returncode == -9
    assert [p.name for p in (tmp_path / "resumed/checkpoints").iterdir() if p.name.startswith("step-")] == [
        "step-000010"
    ]
    assert not (tmp_path / "resumed/merged").exists()
    train(resumed, resume=True)

    a = load_file(tmp_path / "straight/merged/model.safetensors")
    b = load_file(tmp_path / "resumed/merged/model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _without_timings(_metrics(tmp_path / "straight")) == _without_timings(_metrics(tmp_path / "resumed"))


def test_early_stopping_exports_the_best_checkpoint(tiny_config):
    # min_delta larger than any possible gain: the first evaluation stays the best.
    cfg = tiny_config(train={"early_stopping": {"patience": 2, "min_delta": 100.0}})
    summary = train(cfg)
    assert summary.stopped_early and summary.steps == 15 and summary.best_step == 5
    assert json.loads(Path(cfg.out_dir, "checkpoints/best/best.json").read_text())["step"] == 5
    ours = attach_method(load_model(cfg.model).model, cfg)
    load_best(f"{cfg.out_dir}/checkpoints/best", ours)
    merged = load_file(f"{cfg.out_dir}/merged/model.safetensors")
    folded = ours.merge_and_unload().state_dict()
    assert all(torch.allclose(merged[k], folded[k], atol=1e-6) for k in merged)


@pytest.mark.parametrize("state_dtype", ["float32", "bfloat16"])
def test_full_fine_tuning_writes_only_a_merged_model(tiny_config, state_dtype):
    train_section = {"max_steps": 6, "lr": 1e-3, "eval_every": 3, "optimizer_state_dtype": state_dtype}
    cfg = tiny_config(method={"name": "full"}, train=train_section)
    summary = train(cfg)
    out = Path(cfg.out_dir)
    assert summary.best_val_loss < summary.initial_val_loss
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in (out / "merged").iterdir()}
    assert not (out / "adapter").exists()


def test_packed_and_padded_runs_follow_the_same_trajectory(tiny_config, tmp_path):
    # No dropout: its masks depend on the tensor layout, which is exactly what differs here.
    same = {"method": {"dropout": 0.0}, "train": {"max_steps": 6}}
    padded = train(tiny_config(out_dir=str(tmp_path / "padded"), data={"packing": False}, **same))
    packed = train(tiny_config(out_dir=str(tmp_path / "packed"), data={"packing": True}, **same))
    assert packed.trained_tokens == padded.trained_tokens
    assert abs(packed.best_val_loss - padded.best_val_loss) < 1e-5 * padded.best_val_loss


def test_fast_paths_off_runs_plain_peft_and_takes_the_same_steps(tiny_config, tmp_path, monkeypatch):
    import tunesmith.train.recipe as recipe

    same = {"method": {"dropout": 0.0}, "train": {"max_steps": 4, "log_every": 1}}
    fast = train(tiny_config(out_dir=str(tmp_path / "fast"), data={"packing": False}, **same))
    used = []
    for kernel in ("fuse_lora", "LeanStorage", "ActivationArena", "fix_mmap_threshold"):
        monkeypatch.setattr(recipe, kernel, lambda *a, kernel=kernel, **k: used.append(kernel))
    cfg = tiny_config(out_dir=str(tmp_path / "plain"), **{**same, "train": {**same["train"], "fast_paths": False}})
    assert cfg.data.packing is False  # packed rows need the packed attention kernel
    plain = train(cfg)
    assert used == []
    fast_losses, plain_losses = (
        [r["train_loss"] for r in _metrics(tmp_path / n) if "train_loss" in r] for n in ("fast", "plain")
    )
    assert len(plain_losses) == 4 and plain_losses == pytest.approx(fast_losses, rel=1e-5)
    assert plain.best_val_loss == pytest.approx(fast.best_val_loss, rel=1e-5)


def test_packing_asked_for_without_the_fast_paths_is_refused(tiny_config):
    with pytest.raises(TunesmithError, match="data.packing=true needs the packed attention of train.fast_paths=true"):
        tiny_config(data={"packing": True}, train={"fast_paths": False})


def test_a_second_run_in_the_same_folder_is_refused(lora_run):
    cfg, _, out = lora_run
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(TunesmithError, match="already holds a run; pass --overwrite"):
        train(cfg)
    assert sorted(p.name for p in out.iterdir()) == before


def test_resume_without_a_checkpoint_is_refused(tiny_config):
    with pytest.raises(TunesmithError, match="no checkpoint to resume from"):
        train(tiny_config(), resume=True)


def test_compiled_run_takes_the_same_steps_as_eager(tiny_config, tmp_path):
    """torch.compile must trace the fused LoRA, packed attention and loss functions (and the run must
    not install hooks it cannot trace)."""
    runs = {}
    for name, compile_ in (("eager", False), ("compiled", True)):
        train_section = {"max_steps": 3, "dtype": "auto", "log_every": 1, "eval_every": 3, "compile": compile_}
        cfg = tiny_config(out_dir=tmp_path / name, method={"dropout": 0.0}, train=train_section, eval={"samples": 0})
        train(cfg)
        runs[name] = [m["train_loss"] for m in _metrics(tmp_path / name) if "train_loss" in m]
    assert len(runs["compiled"]) == 3
    assert runs["compiled"] == pytest.approx(runs["eager"], rel=1e-2)


def test_a_nan_loss_stops_the_run_and_never_reaches_the_metrics(tiny_config, monkeypatch):
    from tunesmith.train.distributed import LossModule

    forward = LossModule.forward

    def diverged(self, *args, **kwargs):
        loss, sums = forward(self, *args, **kwargs)
        return (loss * float("nan"), sums * float("nan")) if self.training else (loss, sums)

    monkeypatch.setattr(LossModule, "forward", diverged)
    cfg = tiny_config(train={"max_steps": 4, "log_every": 1})
    with pytest.raises(TunesmithError, match=r"step 1: train_loss=nan.*train.nan_policy: stop"):
        train(cfg)
    assert [m["step"] for m in _metrics(Path(cfg.out_dir))] == [0]


def test_metrics_lines_write_non_finite_numbers_as_null(tmp_path):
    from tunesmith.runfolder import MetricsLog

    MetricsLog(tmp_path / "metrics.jsonl", None).write({"step": 1, "train_loss": float("nan"), "lr": float("inf")})
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 1, "train_loss": null, "lr": null}\n'


def test_the_fake_trainer_and_the_real_one_write_the_same_run_folder(lora_run, tmp_path):
    """The service's tests stand in a fake trainer: its folders must read like the real one's."""
    from tunesmith.runfolder import checkpoint_steps, read_metrics, read_summary

    fake_out = tmp_path / "fake"
    data = tmp_path / "train.jsonl"
    data.write_text("{}\n" * 8)
    train_section = {"batch_size": 2, "epochs": 1, "eval_every": 2, "log_every": 1, "save_every": 2}
    config = tmp_path / "fake.yaml"
    config.write_text(json.dumps({"out_dir": str(fake_out), "data": {"train": str(data)}, "train": train_section}))
    fake = Path(__file__).resolve().parents[1] / "serve" / "fake_trainer.py"
    env = {**os.environ, "FAKE_STEP_SECONDS": "0"}
    subprocess.run([sys.executable, str(fake), str(config), "--overwrite"], check=True, env=env)
    for out in (Path(lora_run[2]), fake_out):
        metrics = read_metrics(out)
        assert metrics and all(isinstance(m["step"], int) for m in metrics), out
        assert any(isinstance(m.get("train_loss"), float) for m in metrics)
        assert any(isinstance(m.get("val_loss"), float) for m in metrics)
        assert checkpoint_steps(out) == sorted(checkpoint_steps(out)) and checkpoint_steps(out), out
        summary = read_summary(out)
        assert summary["steps"] == metrics[-1]["step"] and summary["trained_tokens"] > 0
        assert (out / "adapter" / "adapter_config.json").is_file()
