import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tunesmith.cli import main
from tunesmith.config import config_from_dict, dump_config
from tunesmith.models import load_model, resolve_model_path
from tunesmith.tune.interpolate import interpolate, interpolate_state

TEST = [("Is snow white?", "yes"), ("Is the sun dark?", "no"), ("Is grass green?", "yes")]


def _write_jsonl(path, pairs):
    path.write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in pairs))
    return str(path)


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory, tiny_model_name):
    """A run folder whose merged/ is the tiny model with every tensor shifted by seeded noise."""
    run = tmp_path_factory.mktemp("interp") / "run"
    shutil.copytree(resolve_model_path(tiny_model_name), run / "merged")
    model = load_model(str(run / "merged")).model
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    model.save_pretrained(run / "merged")
    data = tmp_path_factory.mktemp("interp-data")
    cfg = {
        "model": tiny_model_name,
        "out_dir": str(run),
        "data": {"train": _write_jsonl(data / "train.jsonl", TEST), "test": _write_jsonl(data / "test.jsonl", TEST)},
        "eval": {
            "task": "classification",
            "labels": ["yes", "no"],
            "max_new_tokens": 4,
            "bootstrap_resamples": 20,
            "general_text": _write_jsonl(data / "general.txt", [("some general text", "x")] * 5),
        },
    }
    (run / "config.yaml").write_text(dump_config(config_from_dict(cfg)))
    return run


def _weights(folder):
    return load_file(str(folder / "model.safetensors"))


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_alpha_mixes_every_tensor(fake_run, tiny_model_name, tmp_path, alpha):
    out = interpolate(fake_run, alpha, tmp_path / "mixed")
    base = _weights(Path(resolve_model_path(tiny_model_name)))
    tuned, mixed = _weights(fake_run / "merged"), _weights(out)
    assert set(mixed) == set(tuned)
    expected = {0.0: base, 1.0: tuned}.get(alpha) or {k: (base[k] + tuned[k]) / 2 for k in base}
    for name in mixed:
        assert torch.equal(mixed[name], expected[name]), name  # exact, not close
    assert any(not torch.equal(base[k], tuned[k]) for k in base)
    # A model folder like merged/: the tokenizer travels with it and it loads.
    assert (out / "tokenizer.json").is_file() and json.loads((out / "interpolation.json").read_text())["alpha"] == alpha
    load_model(str(out))


def test_different_tensors_refused():
    base = {"a": torch.zeros(2), "b": torch.zeros(2)}
    with pytest.raises(Exception, match="different tensors"):
        interpolate_state(base, {"a": torch.zeros(2)}, 0.5)
    with pytest.raises(Exception, match=r"tensor a has shape \(3,\) in the fine-tune and \(2,\) in the base"):
        interpolate_state(base, {"a": torch.zeros(3), "b": torch.zeros(2)}, 0.5)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--alpha", "1.5"], "must be between 0 (the base) and 1 (the fine-tune)"),
        (["--alphas", "0,x"], "must be numbers separated by commas"),
        (["--alphas", "0,1"], "--alphas needs --eval CONFIG"),
        ([], "give --alpha A"),
        (["--alpha", "0.5", "data.test=x.jsonl"], "apply to the --eval config of --alphas"),
    ],
)
def test_cli_errors(fake_run, capsys, args, message):
    assert main(["interpolate", str(fake_run), *args]) == 2
    assert message in capsys.readouterr().err


def test_curve_table_and_plot(fake_run, tmp_path, capsys):
    out = tmp_path / "curve"
    assert (
        main(
            [
                "interpolate",
                str(fake_run),
                "--alphas",
                "1,0,0.5",
                "--eval",
                str(fake_run / "config.yaml"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    curve = json.loads((out / "curve.json").read_text())
    assert [row["alpha"] for row in curve["alphas"]] == [0.0, 0.5, 1.0]
    assert curve["metric"] == "accuracy" and curve["alphas"][0]["forgetting"] == 0.0
    # Noise added to every weight makes general text less likely at alpha 1 than at the base.
    assert curve["alphas"][2]["forgetting"] > 0
    table = (out / "curve.md").read_text()
    assert (
        table.splitlines()[0] == "| alpha | accuracy | macro_f1 | parse_rate | general-text perplexity | forgetting |"
    )
    assert (out / "interpolation.png").read_bytes().startswith(b"\x89PNG")
    assert (out / "alpha-0.5" / "model.safetensors").is_file()


def test_curve_scores_the_file_an_override_names(fake_run, tmp_path):
    """Choosing alpha is a choice: the curve can be scored on validation data instead of the test file."""
    validation = _write_jsonl(tmp_path / "validation.jsonl", TEST[:2])
    out = tmp_path / "curve"
    args = ["interpolate", str(fake_run), "--alphas", "1", "--eval", str(fake_run / "config.yaml"), "--out", str(out)]
    assert main([*args, f"data.test={validation}"]) == 0
    curve = json.loads((out / "curve.json").read_text())
    assert curve["test_file"] == validation and curve["items"] == 2
