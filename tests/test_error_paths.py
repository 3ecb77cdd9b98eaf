"""Failures a user meets early: a missing data file before any model loads, no lock file left
behind, an encoder run asked for several processes."""

import contextlib
import json
import os

import pytest

from tunesmith.cli import main
from tunesmith.config import dump_config
from tunesmith.errors import TunesmithError
from tunesmith.runfolder import lock_holder, lock_path, locked


@pytest.fixture
def no_model_loads(monkeypatch):
    """Any model or tokenizer load fails the test: the error must come before."""

    def load(*args, **kwargs):
        raise AssertionError("a model was loaded before the data files were checked")

    for target in (
        "tunesmith.train.recipe.load_model_for",
        "tunesmith.evaluate.run.load_model_for",
        "tunesmith.evaluate.run.load_model",
        "tunesmith.evaluate.run.load_tokenizer",
    ):
        monkeypatch.setattr(target, load)


@pytest.fixture
def config(make_tiny_config, tmp_path):
    cfg = make_tiny_config(tmp_path / "run", train={"max_steps": 2, "eval_every": 1}, eval={"samples": 0})
    path = tmp_path / "config.yaml"
    path.write_text(dump_config(cfg))
    return path


@pytest.mark.parametrize(
    "command, field",
    [
        ("train", "train"),
        ("train", "validation"),
        ("train", "test"),  # read after training: found missing before it, not after
        ("eval", "test"),
        ("eval", "train"),  # the few-shot demonstrations
    ],
)
def test_a_missing_data_file_is_reported_before_any_model_loads(
    command, field, config, tmp_path, small_e2e, no_model_loads, capsys
):
    missing = tmp_path / "nowhere" / f"{field}.jsonl"
    overrides = [f"data.{field}={missing}"]
    if command == "eval" and field != "test":
        overrides.append(f"data.test={small_e2e / 'validation.jsonl'}")
    assert main([command, str(config), *overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"tunesmith: error: data file not found: {missing} (data.{field})"
    assert not (tmp_path / "run").exists()
    assert not lock_path(tmp_path / "run").exists()


def test_a_relative_missing_path_names_the_working_directory(config, tmp_path, monkeypatch, no_model_loads, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", str(config), "data.validation=data/val.jsonl"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(
        f"data file not found: data/val.jsonl (data.validation, relative to the working directory {tmp_path})"
    )


def test_a_run_that_fails_after_taking_the_lock_leaves_no_lock_file(config, tmp_path, small_e2e, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text((small_e2e / "train.jsonl").read_text() + '{"messages": []}\n')
    assert main(["train", str(config), f"data.train={bad}"]) == 2  # found bad while preparing the data
    assert "bad.jsonl" in capsys.readouterr().err
    assert not lock_path(tmp_path / "run").exists()


@pytest.mark.parametrize("fails", [False, True])
def test_the_lock_is_held_while_running_and_gone_after(tmp_path, fails):
    out_dir = tmp_path / "run"
    with pytest.raises(RuntimeError) if fails else contextlib.nullcontext():
        with locked(out_dir):
            assert lock_holder(out_dir) == os.getpid()
            with pytest.raises(TunesmithError, match="is in use by another trainer"):
                with locked(out_dir):
                    pass
            assert lock_holder(out_dir) == os.getpid()  # the refused second try took nothing away
            if fails:
                raise RuntimeError("the run failed")
    assert not lock_path(out_dir).exists() and lock_holder(out_dir) is None
    with locked(out_dir):  # and the folder can be trained into again
        assert lock_holder(out_dir) == os.getpid()


def test_an_encoder_run_on_several_processes_is_refused_in_one_line(tmp_path, capsys):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"query": "q", "positive": "p"}) + "\n")
    config = tmp_path / "encoder.yaml"
    config.write_text(
        json.dumps(
            {
                "model": "some-encoder",
                "data": {"train": str(pairs)},
                "method": {"objective": "contrastive"},
                "out_dir": str(tmp_path / "run"),
            }
        )
    )
    assert main(["train", str(config), "--nproc-per-node", "2"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "tunesmith: error: encoder objectives train on one process: run `tunesmith train` without --nproc-per-node\n"
    )
    assert not (tmp_path / "run").exists() and not lock_path(tmp_path / "run").exists()
