"""The CLI's contract: one line and exit 2 on bad input, nothing half-written."""

import argparse
import json
from importlib.metadata import version

import pytest

import tunesmith
from tunesmith.cli import build_parser, main
from tunesmith.config import dump_config


@pytest.fixture
def config(make_tiny_config, tmp_path):
    """A 4-step run written as YAML; bad values come in as command-line overrides."""
    cfg = make_tiny_config(
        tmp_path / "run",
        train={"max_steps": 4, "eval_every": 2, "save_every": 2},
        eval={"samples": 1},
    )
    path = tmp_path / "config.yaml"
    path.write_text(dump_config(cfg))
    return path


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.lerning_rate=0.1"], "unknown key 'train.lerning_rate' (did you mean 'train.lr'?)"),
        (
            ["train.lrr=1"],
            "tunesmith: error: override 'train.lrr=1': unknown key 'train.lrr' (did you mean 'train.lr'?)",
        ),
        (
            ["learning_rate=1e-4"],
            "override 'learning_rate=1e-4': unknown key 'learning_rate' (did you mean 'train.lr'?)",
        ),
        (["train.lr=-1"], "train.lr: Input should be greater than 0"),
        (["method.r=0"], "method.r: Input should be greater than or equal to 1"),
        (["train.batch_size=0"], "train.batch_size: Input should be greater than or equal to 1"),
        (["model=no-such-model"], "model not found: 'no-such-model'"),
        (["data.train=/nowhere/train.jsonl"], "data file not found: /nowhere/train.jsonl"),
        (["data.format=parquet"], "data.format: Input should be"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, config, capsys, overrides, message):
    assert main(["train", str(config), *overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err
    assert "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["validate", "DATA", "--format", "chat"],
            "tunesmith: error: --format: Input should be 'auto', 'messages', 'sharegpt', 'prompt_completion', "
            "'alpaca', 'csv', 'text', 'openai_dpo' or 'chosen_rejected' (got 'chat')",
        ),
        (
            ["validate", "DATA", "--max-seq-len", "4"],
            "--max-seq-len: Input should be greater than or equal to 8 (got 4)",
        ),
        (["validate", "DATA", "--batch-size", "0"], "--batch-size: Input should be greater than or equal to 1 (got 0)"),
        (["validate", "DATA", "--grad-accum", "-1"], "--grad-accum: Input should be greater than or equal to 1"),
        (["validate", "DATA", "--columns", "prompt"], "--columns 'prompt' must look like prompt=mr,completion=ref"),
        (["validate", "DATA", "--overlength", "cut"], "argument --overlength: invalid choice: 'cut'"),
        (["validate", "DATA", "--max-seq-len", "many"], "argument --max-seq-len: invalid int value: 'many'"),
        (["generate", "--prompt", "hi", "--top-p", "2"], "--top-p: Input should be less than or equal to 1 (got 2.0)"),
        (["generate", "--prompt", "hi", "--temperature", "-1"], "--temperature: Input should be greater than or equal"),
        (["generate", "--prompt", "hi", "--max-new-tokens", "0"], "--max-new-tokens: Input should be greater than"),
        (["generate"], "the following arguments are required: --prompt (see `tunesmith generate --help`)"),
        (["train"], "the following arguments are required: config (see `tunesmith train --help`)"),
        (["trian", "cfg.yaml"], "argument COMMAND: invalid choice: 'trian'"),
        (["train", "cfg.yaml", "--resume", "--overwrite"], "argument --overwrite: not allowed with argument --resume"),
        (["validate", "DATA", "--bogus"], "unrecognized arguments: --bogus"),
        ([], "the following arguments are required: COMMAND"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(tmp_path, capsys, argv, message):
    data = tmp_path / "data.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n')
    argv = [str(data) if a == "DATA" else a for a in argv]
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own errors leave through sys.exit
        code = exit_.code
    assert code == 2
    captured = capsys.readouterr()
    err = captured.err
    assert message in err and err.startswith("tunesmith: error: ")
    assert err.count("\n") == 1 and "Traceback" not in err and captured.out == ""


def test_bad_data_lines_stop_training_before_anything_is_written(tmp_path, small_e2e, config, capsys):
    bad = tmp_path / "bad.jsonl"
    good = (small_e2e / "train.jsonl").read_text()
    bad.write_text(good + '{"prompt": "hi"}\n{"prompt": "x", "completion": ""}\nnot json\n')
    assert main(["train", str(config), f"data.train={bad}"]) == 2
    err = capsys.readouterr().err
    assert "3 error(s)" in err and "bad.jsonl:65" in err and "bad.jsonl:66" in err and "bad.jsonl:67" in err
    assert not (tmp_path / "run").exists()


def test_missing_config_file(capsys):
    assert main(["train", "/nowhere/config.yaml"]) == 2
    assert "config file not found: /nowhere/config.yaml" in capsys.readouterr().err


def test_validate_reports_every_bad_line_and_exits_1(tmp_path, tiny_model_name, capsys):
    data = tmp_path / "chat.jsonl"
    data.write_text(
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'
        '{"messages": [{"role": "bot", "content": "hi"}]}\n'
        "{broken\n"
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'
    )
    assert main(["validate", str(data), "--model", tiny_model_name, "--batch-size", "2"]) == 1
    out = capsys.readouterr().out
    assert "line 2: messages[0].role: unknown role 'bot'" in out
    assert "line 3:" in out and "invalid JSON" in out
    assert "line 4: warning: exact duplicate of line 1" in out
    assert "steps per epoch: 1" in out


def test_validate_clean_file_exits_0(small_e2e, tiny_model_name, capsys):
    assert main(["validate", str(small_e2e / "train.jsonl"), "--model", tiny_model_name]) == 0
    out = capsys.readouterr().out
    assert "64 examples" in out and "0 errors" in out and "label tokens per sequence" in out


def test_train_then_generate_from_the_run_folder(tmp_path, config, capsys):
    assert main(["train", str(config)]) == 0
    out = capsys.readouterr().out
    assert "validation loss:" in out and "before ->" in out
    assert main(["train", str(config)]) == 2  # the folder now holds a run
    assert "already holds a run" in capsys.readouterr().err
    assert main(["generate", "--model", str(tmp_path / "run"), "--prompt", "hi", "--max-new-tokens", "3"]) == 0
    # overrides may also follow the flags
    assert main(["train", str(config), "--overwrite", "train.max_steps=2"]) == 0
    assert json.loads((tmp_path / "run/summary.json").read_text())["steps"] == 2


def test_train_with_a_test_file_evaluates_against_the_base_model(tmp_path, small_e2e, config, capsys):
    test_file = f"data.test={small_e2e / 'validation.jsonl'}"
    assert main(["train", str(config), test_file, "eval.max_items=2", "eval.few_shot_k=1"]) == 0
    eval_json = json.loads((tmp_path / "run/eval.json").read_text())
    assert set(eval_json["variants"]) == {"zero_shot", "few_shot", "finetuned"}
    assert (tmp_path / "run/report.html").is_file()
    assert "finetuned" in capsys.readouterr().out


def _parsers(parser: argparse.ArgumentParser, name: str = "tunesmith"):
    """Every parser of the command tree with its command line, e.g. ("tunesmith keys create", parser)."""
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command, child in action.choices.items():
                yield from _parsers(child, f"{name} {command}")


def test_every_command_flag_and_positional_has_a_description():
    undocumented = []
    for name, parser in _parsers(build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                undocumented += [f"{name} {a.dest}" for a in action._choices_actions if not (a.help or "").strip()]
            elif not (action.help or "").strip():
                undocumented.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert undocumented == []
    commands = {name for name, _ in _parsers(build_parser())}
    assert {"tunesmith serve", "tunesmith keys create", "tunesmith keys revoke", "tunesmith validate"} <= commands


def test_version_comes_from_the_package_metadata(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"tunesmith {version('tunesmith')}"
    assert tunesmith.__version__ == version("tunesmith")  # the package's own constant agrees with pyproject


def test_help_lists_the_exit_codes(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for code, meaning in [
        ("0", "success"),
        ("1", "data has errors"),
        ("2", "usage or input error"),
        ("130", "interrupted"),
    ]:
        assert any(line.split()[:1] == [code] and meaning in line for line in out.splitlines()), code


def test_csv_without_a_mapping_shows_the_flag_and_yaml_that_fix_it(tmp_path, tiny_model_name, capsys):
    import re

    import yaml

    data = tmp_path / "e2e.csv"
    data.write_text("mr,ref\nname[Aromi],Aromi is a place.\nname[Bibimbap],Bibimbap is a house.\n")
    assert main(["validate", str(data), "--model", tiny_model_name]) == 2
    err = capsys.readouterr().err
    flag, snippet = re.findall(r"`([^`]+)`", err)[:2]
    assert flag == "--columns prompt=mr,completion=ref"
    assert yaml.safe_load(snippet) == {"columns": {"prompt": "mr", "completion": "ref"}}
    assert main(["validate", str(data), "--model", tiny_model_name, *flag.split()]) == 0
    assert "2 examples" in capsys.readouterr().out


def test_the_repository_ships_the_apache_2_licence_that_pyproject_declares():
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    licence = (root / "LICENSE").read_text(encoding="utf-8")
    assert tomllib.loads((root / "pyproject.toml").read_text())["project"]["license"] == "Apache-2.0"
    assert "Apache License\n                           Version 2.0, January 2004" in licence
    sections = ["Definitions", "Grant of Copyright License", "Grant of Patent License", "Redistribution"]
    sections += ["Submission of Contributions", "Trademarks", "Disclaimer of Warranty", "Limitation of Liability"]
    sections += ["Accepting Warranty or Additional Liability"]
    for number, title in enumerate(sections, 1):
        assert f"   {number}. {title}." in licence, title
    assert "END OF TERMS AND CONDITIONS" in licence and "Copyright 2026 The tunesmith authors" in licence


def test_ctrl_c_exits_130_with_one_line(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr("tunesmith.cli._generate", interrupted)
    assert main(["generate", "--prompt", "hi"]) == 130
    assert capsys.readouterr().err == "tunesmith: interrupted\n"
