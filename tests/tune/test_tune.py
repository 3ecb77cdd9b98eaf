import builtins
import csv
import io
import json
import os
from pathlib import Path

import optuna
import pytest
import yaml

from tunesmith.cli import main
from tunesmith.config import SearchRange, config_from_dict, dump_config, load_config
from tunesmith.runfolder import MERGED, METRICS, read_metrics
from tunesmith.tune import search
from tunesmith.tune.objective import Goal, TrialOutcome, TrialRunner, resolve_goal
from tunesmith.tune.space import config_values, default_space, search_space
from tunesmith.tune.study import STUDY_NAME

LR_SPACE = {"train.lr": {"low": 1e-4, "high": 1e-2, "log": True}}


@pytest.fixture
def write_config(make_tiny_config, tmp_path):
    """write_config(**sections): the tiny LoRA config as a YAML file, with sections merged in."""

    def write(name="config.yaml", **sections):
        # Dumped from a valid config, then the sections merged in unchecked: bad ones reach the command.
        raw = yaml.safe_load(dump_config(make_tiny_config(tmp_path / "run")))
        raw["tune"]["baseline"] = False  # trials drawn from the first; the baseline trial has its own test
        for section, values in sections.items():
            raw[section] = {**raw[section], **values}
        path = tmp_path / name
        path.write_text(yaml.safe_dump(raw))
        return path

    return write


def _number(cfg) -> int:
    return int(Path(cfg.out_dir).name.removeprefix("trial-"))


def _lr_runner(cfg, should_stop):
    """A trial without training: the score is the learning rate, forgetting nil."""
    return TrialOutcome(cfg.train.lr, 1.0, None, None, 3)


def _states(out):
    study = optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{out / 'study.db'}")
    return study, [t.state.name for t in study.trials]


def test_study_resumes_and_requeues_a_trial_left_running(write_config, tmp_path):
    config, out = write_config(tune={"space": LR_SPACE}), tmp_path / "study"
    first = search.tune(config, trials=2, out=out, runner=_lr_runner)
    assert first.trials == 2 and first.best is not None
    # A command killed mid-trial leaves the trial RUNNING with its values drawn.
    study, _ = _states(out)
    left = study.ask()
    left.suggest_float("train.lr", 1e-4, 1e-2, log=True)

    again = search.tune(config, trials=4, out=out, runner=_lr_runner)
    study, states = _states(out)
    assert again.trials == 4 and states == ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE"]
    retry = study.trials[3]
    assert retry.params == study.trials[2].params and retry.user_attrs["retry_of"] == 2
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [r["state"] for r in rows] == ["complete", "complete", "failed", "complete"]
    assert "interrupted" in rows[2]["note"] and rows[3]["note"] == "retry of trial 2"
    results = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    assert sorted(r["trial"] for r in results) == [0, 1, 2, 3]
    # Enough trials already: nothing runs, nothing changes.
    assert search.tune(config, trials=3, out=out, runner=_lr_runner).trials == 4


def test_the_config_as_written_is_trial_0(write_config, tmp_path, capsys):
    config = write_config(train={"lr": 3e-3}, tune={"space": LR_SPACE, "baseline": True})
    out = tmp_path / "study"
    search.tune(config, trials=3, out=out, runner=_lr_runner)
    study, states = _states(out)
    assert states == ["COMPLETE"] * 3
    assert study.trials[0].params == {"train.lr": 3e-3}
    assert all(t.params["train.lr"] != 3e-3 for t in study.trials[1:])  # then drawn
    notes = [r["note"] for r in csv.DictReader((out / "trials.csv").open())]
    assert notes == ["the config as written", "", ""]
    # A value outside the space cannot be a trial: said once, and every trial is drawn.
    outside = write_config("outside.yaml", train={"lr": 0.5}, tune={"space": LR_SPACE, "baseline": True})
    search.tune(outside, trials=1, out=tmp_path / "outside", runner=_lr_runner)
    assert "the config as written is not a trial: train.lr = 0.5 is outside the space" in capsys.readouterr().err
    study, _ = _states(tmp_path / "outside")
    assert 1e-4 <= study.trials[0].params["train.lr"] <= 1e-2


def test_the_config_values_of_the_default_lora_space():
    raw = {"method": {"r": 16, "alpha": 32.0}, "train": {"lr": 1e-3, "batch_size": 8, "warmup_steps": 10}}
    space = {
        "train.lr": SearchRange(low=1e-5, high=2e-3, log=True),
        "method.r": [8, 16, 32, 64],
        "method.alpha_per_r": [0.5, 1, 2, 4],
        "train.batch_size": [4, 8, 16],
        "train.warmup_steps": [0, 10, 50],
    }
    values, why = config_values(raw, space)
    assert why == "" and values == {
        "train.lr": 1e-3, "method.r": 16, "method.alpha_per_r": 2, "train.batch_size": 8, "train.warmup_steps": 10
    }  # fmt: skip
    raw["train"]["warmup_steps"] = 20
    assert config_values(raw, space) == (None, "train.warmup_steps = 20 is outside the space")


def test_a_folder_holding_another_search_is_refused(write_config, tmp_path):
    out = tmp_path / "study"
    search.tune(write_config(tune={"space": LR_SPACE}), trials=1, out=out, runner=_lr_runner)
    other = write_config("other.yaml", tune={"space": {"train.lr": [1e-3, 1e-2]}})
    with pytest.raises(Exception, match="holds a study with another space"):
        search.tune(other, trials=2, out=out, runner=_lr_runner)


def test_an_infeasible_trial_is_never_chosen(write_config, tmp_path, monkeypatch):
    monkeypatch.setattr(search, "base_perplexity", lambda cfg: 10.0)
    general = tmp_path / "general.txt"
    general.write_text("general text\n")

    def runner(cfg, should_stop):
        # Later trials score higher; odd ones forget 50%, over the 10% budget.
        number = _number(cfg)
        forgetting = 0.5 if number % 2 else 0.02
        return TrialOutcome(float(number), 1.0, 10.0 * (1 + forgetting), forgetting, 3)

    config = write_config(eval={"general_text": str(general)}, tune={"space": LR_SPACE, "max_forgetting": 0.1})
    out = tmp_path / "study"
    result = search.tune(config, trials=4, out=out, runner=runner)
    assert result.best == 2  # trial 3 scores higher, over the budget
    rows = {int(r["trial"]): r for r in csv.DictReader((out / "trials.csv").open())}
    assert [rows[n]["feasible"] for n in range(4)] == ["True", "False", "True", "False"]
    assert rows[2]["best"] == "True" and rows[3]["best"] == "False"
    results = {r["trial"]: r for r in map(json.loads, (out / "trials.jsonl").read_text().splitlines())}
    assert load_config(out / "best.yaml").train.lr == pytest.approx(results[2]["params"]["train.lr"])
    assert (out / "pareto.png").read_bytes().startswith(b"\x89PNG")
    assert "Forgetting budget: general-text perplexity at most 10.0% above" in (out / "trials.md").read_text()


def test_pruning_stops_a_trial_behind_the_median(write_config, tmp_path):
    def runner(cfg, should_stop):
        loss = 1.0 if _number(cfg) == 0 else 5.0
        for step in (1, 2, 3):
            if should_stop(step, {"val_loss": loss}):
                return TrialOutcome(None, loss, None, None, step, stopped_at=step)
        return TrialOutcome(-loss, loss, None, None, 3)

    config = write_config(tune={"space": LR_SPACE, "startup_trials": 1, "metric": "val_loss"})
    out = tmp_path / "study"
    search.tune(config, trials=2, out=out, runner=runner)
    _, states = _states(out)
    assert states == ["COMPLETE", "PRUNED"]
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert rows[1]["note"] == "pruned at step 1"
    assert list(rows[0]).count("val_loss") == 1  # the study's value, not a second loss column


def test_a_pruned_trial_stops_its_training_run(tiny_config, tmp_path):
    cfg = tiny_config(train={"max_steps": 3, "eval_every": 1}, tune={"metric": "val_loss"})
    seen = []

    def should_stop(step, validation):
        seen.append(step)
        return True

    outcome = TrialRunner(cfg, resolve_goal(cfg), None)(cfg, should_stop)
    assert seen == [1] and outcome.stopped_at == 1 and outcome.steps == 1 and outcome.value is None
    assert max(m["step"] for m in read_metrics(Path(cfg.out_dir))) == 1


def test_time_budget_stops_new_trials(write_config, tmp_path, monkeypatch):
    import time
    from types import SimpleNamespace

    from tunesmith.tune import study

    now = [1000.0]  # a clock each trial moves on by 2 minutes
    clock = SimpleNamespace(time=lambda: now[0], perf_counter=time.perf_counter)
    monkeypatch.setattr(search, "time", clock)
    monkeypatch.setattr(study, "time", clock)

    def two_minutes(cfg, should_stop):
        now[0] += 120
        return _lr_runner(cfg, should_stop)

    config = write_config(tune={"space": LR_SPACE})
    result = search.tune(config, trials=10, time_budget_min=5, out=tmp_path / "s", runner=two_minutes)
    assert result.trials == 3  # started at 0, 2 and 4 minutes; none at 6


def test_a_failing_trial_is_recorded_and_the_search_goes_on(write_config, tmp_path):
    def runner(cfg, should_stop):
        if _number(cfg) == 0:
            raise RuntimeError("out of memory")
        return _lr_runner(cfg, should_stop)

    out = tmp_path / "study"
    result = search.tune(write_config(tune={"space": LR_SPACE}), trials=2, out=out, runner=runner)
    assert result.best == 1
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert rows[0]["state"] == "failed" and rows[0]["note"] == "RuntimeError: out of memory"
    assert "RuntimeError: out of memory" in (out / "trials" / "trial-0000" / "tune.log").read_text()


@pytest.fixture
def guarded_test_file(tmp_path, monkeypatch):
    """data.test that must never be opened: every open of it is recorded and fails."""
    path = tmp_path / "test.jsonl"
    path.write_text("not json: reading this is a bug\n")
    opened = []

    def guard(real):
        def open_guarded(file, *args, **kwargs):
            if isinstance(file, (str, os.PathLike)) and Path(os.fspath(file)).resolve() == path.resolve():
                opened.append(file)
                raise AssertionError(f"the test split was opened: {file}")
            return real(file, *args, **kwargs)

        return open_guarded

    monkeypatch.setattr(builtins, "open", guard(builtins.open))
    monkeypatch.setattr(io, "open", guard(io.open))
    monkeypatch.setattr(os, "open", guard(os.open))
    return path, opened


def test_tune_end_to_end_never_reads_test_and_best_config_trains(
    write_config, tmp_path, guarded_test_file, capsys, monkeypatch
):
    test_path, opened = guarded_test_file
    general = tmp_path / "general.txt"
    general.write_text("The cat sat on the mat. The weather is mild today and the trains run on time.\n" * 4)
    config = write_config(
        data={"test": str(test_path)},
        train={"max_steps": 2, "eval_every": 1},
        eval={"general_text": str(general), "max_items": 4, "bootstrap_resamples": 10},
        tune={"space": {**LR_SPACE, "method.r": [4, 8]}, "max_forgetting": 1.0},
    )
    out = tmp_path / "study"
    assert main(["tune", str(config), "--trials", "2", "--out", str(out)]) == 0
    assert opened == []
    captured = capsys.readouterr()
    assert "trial 0: method.r=" in captured.err and "train.lr=" in captured.err and "trial 1: bleu " in captured.err
    assert "best: trial" in captured.out

    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [r["state"] for r in rows] == ["complete", "complete"]
    assert list(rows[0])[:6] == ["trial", "state", "bleu", "forgetting", "feasible", "best"]
    assert all(r["forgetting"] != "" for r in rows)
    results = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    assert [r["metric"] for r in results] == ["bleu", "bleu"]
    assert (out / "pareto.png").read_bytes().startswith(b"\x89PNG")
    assert "| trial | state | bleu |" in (out / "trials.md").read_text()
    # Only the best trial keeps its weights; every trial keeps its metrics and log.
    best = next(int(r["trial"]) for r in rows if r["best"] == "True")
    for n in (0, 1):
        folder = out / "trials" / f"trial-{n:04d}"
        assert (folder / MERGED).is_dir() == (n == best) and (folder / METRICS).is_file()
        assert (folder / "tune.log").is_file()

    monkeypatch.undo()  # the final run may read data.test: it is the one evaluation
    chosen = load_config(out / "best.yaml", [f"out_dir={tmp_path / 'final'}"])
    assert chosen.data.test == str(test_path) and chosen.eval.samples == 2
    assert chosen.method.r == results[best]["params"]["method.r"]
    from tunesmith import library

    assert library.train(chosen).steps == 2


@pytest.mark.parametrize(
    ("tune", "eval", "message"),
    [
        ({"space": {"method.r": [0, 8]}}, {}, "tune.space.method.r: 0 does not make a valid config"),
        ({"metric": "accuracy"}, {}, "tune.metric 'accuracy' is not scored for this run's eval.task=generation"),
        ({"space": {"data.test": ["x"]}}, {}, "data.test cannot be searched"),
        ({"max_forgetting": 0.1}, {}, "tune.max_forgetting needs eval.general_text"),
        ({"space": {"train.learning_rate": [1e-3]}}, {}, "did you mean 'train.lr'"),
    ],
)
def test_bad_tune_settings_are_one_line_errors(write_config, tmp_path, capsys, tune, eval, message):
    config = write_config(tune=tune, eval=eval)
    assert main(["tune", str(config), "--trials", "1", "--out", str(tmp_path / "s")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_scoring_a_task_metric_needs_a_validation_file(write_config, tmp_path, capsys):
    config = write_config(data={"validation": None, "val_fraction": 0.2})
    assert main(["tune", str(config), "--out", str(tmp_path / "s")]) == 2
    assert "tune scores bleu on data.validation" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("sections", "keys"),
    [
        ({}, ["train.lr", "method.r", "method.alpha_per_r", "train.batch_size", "train.warmup_steps"]),
        ({"method": {"name": "full", "r": 16, "alpha": 32, "dropout": 0.0}}, ["train.lr", "train.batch_size"]),
        ({"train": {"max_steps": None}}, ["train.lr", "method.r", "method.alpha_per_r", "train.epochs"]),
    ],
)
def test_default_spaces(make_tiny_config, tmp_path, sections, keys):
    cfg = make_tiny_config(tmp_path, **sections)
    assert set(keys) <= set(default_space(cfg))
    # train.max_steps fixes the run's length: epochs are searched only without it.
    assert ("train.epochs" in default_space(cfg)) == (cfg.train.max_steps is None)


def test_default_spaces_of_dpo_and_contrastive():
    dpo = config_from_dict({"data": {"train": "x", "format": "openai_dpo"}, "method": {"name": "dpo"}})
    assert set(default_space(dpo)) == {"train.lr", "method.beta"}
    encoder = config_from_dict({"data": {"train": "x"}, "method": {"name": "full", "objective": "contrastive"}})
    assert {"train.lr", "encoder.temperature", "encoder.hard_negatives"} <= set(default_space(encoder))
    assert resolve_goal(encoder).metric == "val_loss"


def test_a_qa_run_is_scored_by_contains_on_validation():
    qa = config_from_dict({"data": {"train": "x", "validation": "v"}, "eval": {"task": "qa"}})
    goal = resolve_goal(qa)
    assert (goal.metric, goal.direction) == ("contains", "maximize")
    exact = qa.model_copy(update={"tune": qa.tune.model_copy(update={"metric": "exact_match"})})
    assert resolve_goal(exact).metric == "exact_match"


def test_a_grpo_run_is_scored_by_its_validation_reward():
    grader = {"type": "string_check", "name": "c", "input": "{{sample.output_text}}", "reference": "a"}
    grader["operation"] = "eq"
    grpo = config_from_dict({"data": {"train": "x"}, "method": {"name": "grpo"}, "rl": {"grader": grader}})
    goal = resolve_goal(grpo)  # the loop grades its own validation prompts: no validation file needed
    assert (goal.metric, goal.direction, goal.in_loop) == ("reward", "maximize", True)
    assert goal.intermediate({"val_reward": 0.7, "val_loss": -0.7}) == 0.7
    assert set(default_space(grpo)) == {"train.lr"}


def test_a_dpo_trial_is_scored_by_reward_accuracy_at_the_kept_step(tiny_config, write_pairs, tmp_path):
    # DPO's loss scales with beta, which the search varies; the share of pairs ranked right does not.
    train = write_pairs(tmp_path / "pairs.jsonl", 16, openai=True)
    cfg = tiny_config(
        data={"train": str(train), "validation": None, "val_fraction": 0.25, "max_seq_len": 64},
        method={"name": "dpo", "beta": 0.1},
        train={"max_steps": 4, "eval_every": 2, "save_every": 100},
        eval={"task": "preference"},
    )
    goal = resolve_goal(cfg)  # no validation file needed: the loop scores its own held-out pairs
    assert (goal.metric, goal.direction, goal.in_loop) == ("reward_accuracy", "maximize", True)
    reported = []

    def should_stop(step, validation):
        reported.append(goal.intermediate(validation))
        return False

    outcome = TrialRunner(cfg, goal, None)(cfg, should_stop)
    records = {m["step"]: m for m in read_metrics(Path(cfg.out_dir)) if "val_reward_accuracy" in m}
    best = json.loads((Path(cfg.out_dir) / "summary.json").read_text())["best_step"]
    assert outcome.value == records[best]["val_reward_accuracy"]
    assert reported == [records[step]["val_reward_accuracy"] for step in sorted(records) if step > 0]


def test_a_validation_loss_is_compared_negated_when_the_study_maximises():
    bleu = Goal("bleu", "maximize", None, False)
    assert bleu.intermediate({"val_loss": 2.0, "val_accuracy": 0.5}) == -2.0
    assert Goal("val_loss", "minimize", None, False).intermediate({"val_loss": 2.0}) == 2.0


def test_a_given_space_replaces_the_default(make_tiny_config, tmp_path):
    cfg = make_tiny_config(tmp_path, tune={"space": {"method.r": [8, 16]}})
    assert list(search_space(cfg)) == ["method.r"]
