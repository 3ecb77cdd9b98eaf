"""The public library API: the README's example, run on the tiny model."""

import re
from pathlib import Path

import yaml

from tunesmith.config import dump_config

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    section = README.read_text().split("## As a library", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_runs(make_tiny_config, small_e2e, tmp_path, monkeypatch, capsys):
    config = make_tiny_config(tmp_path / "unused", data={"test": str(small_e2e / "validation.jsonl")})
    path = tmp_path / "tiny.yaml"
    path.write_text(dump_config(config))
    code = readme_example()
    assert len(code.strip().splitlines()) <= 12
    monkeypatch.chdir(tmp_path)
    exec(code.replace("configs/e2e_lora.yaml", str(path)).replace('"train.max_steps": 30', '"train.max_steps": 4'))
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("validation loss ")
    run = tmp_path / "runs" / "quick"
    assert (run / "merged").is_dir() and (run / "eval.json").is_file()
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["max_steps"] == 4
