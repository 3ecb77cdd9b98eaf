"""A tool-calling JSONL trains end to end, and the run records how tools were rendered."""

import json

from tunesmith.chat.render import RENDERING_FILE
from tunesmith.cli import main
from tunesmith.config import dump_config

WEATHER = {
    "name": "get_weather",
    "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def _example(i: int) -> dict:
    city = ["Paris", "Rome", "Oslo", "Lima"][i % 4]
    call = {
        "id": f"c{i}",
        "type": "function",
        "function": {"name": "get_weather", "arguments": json.dumps({"city": city})},
    }
    return {
        "messages": [
            {"role": "user", "content": f"Weather in {city}? ({i})"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": f"c{i}", "content": f"{10 + i}C"},
            {"role": "assistant", "content": f"{10 + i}C in {city}."},
        ],
        "tools": [{"type": "function", "function": WEATHER}],
        "parallel_tool_calls": False,
    }


def test_two_steps_on_tool_calls_train_and_record_the_rendering(make_tiny_config, tmp_path, capsys):
    data = tmp_path / "tools.jsonl"
    data.write_text("".join(json.dumps(_example(i)) + "\n" for i in range(10)))
    cfg = make_tiny_config(
        tmp_path / "run",
        data={"train": str(data), "validation": None, "val_fraction": 0.2, "max_seq_len": 512},
        train={"max_steps": 2, "batch_size": 2, "eval_every": 2, "save_every": 2, "log_every": 1},
    )
    config = tmp_path / "config.yaml"
    config.write_text(dump_config(cfg))
    assert main(["train", str(config)]) == 0
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    assert summary["steps"] == 2
    record = {"tools": "fallback", "fallback_version": 1}
    for folder in ("run", "run/merged"):
        assert json.loads((tmp_path / folder / RENDERING_FILE).read_text()) == record
