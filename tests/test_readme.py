"""The README's own-data walkthrough, parsed from its code blocks and run on the tiny test model.

If a command of that section stops working (a renamed flag, a moved file, a changed default), this
test fails: the README is the first thing a new user runs.
"""

import json
import re
import shlex
import sys
from pathlib import Path

import pytest

from tunesmith.cli import main

REPO = Path(__file__).resolve().parents[1]
SECTION = "## Your own chat data"

# The service's helpers (a real `tunesmith serve` process on loopback) live beside its tests.
sys.path.insert(0, str(Path(__file__).with_name("serve")))
from serve_helpers import Server  # noqa: E402


def walkthrough() -> str:
    readme = (REPO / "README.md").read_text()
    assert SECTION in readme, f"README.md has no {SECTION!r} section"
    return readme.split(SECTION, 1)[1].split("\n## ", 1)[0]


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", walkthrough(), re.S)


def commands() -> dict[str, list[str]]:
    """The `tunesmith CMD ...` lines of the section's bash blocks, by command (comments dropped)."""
    found = {}
    for block in blocks("bash"):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            if words[:1] == ["tunesmith"]:
                assert words[1] not in found, f"two `tunesmith {words[1]}` lines in the walkthrough"
                found[words[1]] = words[1:]
    return found


def test_the_walkthrough_names_every_step():
    assert set(commands()) == {"validate", "train", "eval", "generate", "keys", "serve"}
    data = REPO / "examples" / "my_chat.jsonl"
    shown = blocks("json")[0].strip()
    assert shown == data.read_text().strip(), "the README shows examples/my_chat.jsonl as shipped"


def test_the_walkthrough_runs(tiny_model_name, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)  # the README's paths are relative to the repository
    steps, run = commands(), tmp_path / "my_chat"
    tiny = [f"model={tiny_model_name}", f"out_dir={run}"]

    assert main([*steps["validate"], "--model", tiny_model_name]) == 0
    assert "0 errors" in capsys.readouterr().out

    # data.test=null: training would evaluate on it, the same code the eval step runs next.
    assert main([*steps["train"], *tiny, "train.max_steps=2", "data.test=null"]) == 0
    assert (run / "merged" / "config.json").is_file() and (run / "adapter").is_dir()
    assert json.loads((run / "summary.json").read_text())["steps"] == 2
    assert not (run / "eval.json").exists()

    assert main([*steps["eval"], *tiny, "eval.max_new_tokens=4"]) == 0
    report = json.loads((run / "eval.json").read_text())
    assert {"zero_shot", "few_shot", "finetuned"} <= set(report["variants"])
    capsys.readouterr()

    generate = [str(run) if word == "runs/my_chat" else word for word in steps["generate"]]
    assert str(run) in generate, "generate's --model is the config's out_dir, runs/my_chat"
    assert main([*generate, "--max-new-tokens", "4"]) == 0
    # The tiny model's weights are random: its answer may be blank, so the check is that it answered.
    printed = capsys.readouterr()
    assert printed.out.endswith("\n") and "generating 1 prompts: done" in printed.err


@pytest.fixture
def server(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    server = Server(home, [], {}).start()
    yield server
    server.kill()


def test_the_service_answers_with_the_fine_tune(server, tiny_model_name, monkeypatch, capsys):
    assert commands()["keys"][:2] == ["keys", "create"] and commands()["serve"][0] == "serve"
    (code,) = blocks("python")
    monkeypatch.chdir(REPO)
    code = code.replace("http://127.0.0.1:8000/v1", server.url).replace('"ts-..."', repr(server.key("me")))
    exec(code.replace("smollm2-135m-instruct", tiny_model_name), {})
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[0].startswith(f"ft:{tiny_model_name}:org-") and ":trips:" in printed[0], printed
    # The tiny random model's answer may begin with a line break: any text after the model's name counts.
    assert "".join(printed[1:]).strip(), "the fine-tune's answer is printed"
