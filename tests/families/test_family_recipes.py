"""The whole recipe (`tunesmith train`) on a tiny random model of each family, with LoRA and in full:
3 steps take the same losses with every fast path on as with transformers' and PEFT's own modules,
and a run resumed from its step-2 checkpoint ends where the straight run does.

The models are family_models.py's with a 400-token byte-level BPE (tests/conftest.py) and ChatML, so
a run is setup and bookkeeping more than compute; each run is made once and shared by the tests.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch
from family_models import FAMILIES, tiny_model
from safetensors.torch import load_file

from tunesmith.models.vocabulary import CHATML_TEMPLATE
from tunesmith.train.recipe import train

METHODS = ("lora", "full")
STEPS, RESUMED_FROM = 3, 2
# Where a run's final trained weights are.
WEIGHTS = {"lora": "adapter/adapter_model.safetensors", "full": "merged/model.safetensors"}


@pytest.fixture(scope="module")
def family_folder(tmp_path_factory, byte_level_tokenizer):
    """family_folder(family): a model folder of the family (random weights, the byte-level tokenizer
    with ChatML), as `model:` takes it."""
    folders = {}

    def make(family: str) -> str:
        if family not in folders:
            tokenizer = byte_level_tokenizer
            folder = tmp_path_factory.mktemp(family)
            ids = {"vocab_size": len(tokenizer)} | {
                name: getattr(tokenizer, name) for name in ("pad_token_id", "bos_token_id", "eos_token_id")
            }
            tiny_model(family, **ids).save_pretrained(folder)
            tokenizer.chat_template = CHATML_TEMPLATE
            tokenizer.save_pretrained(folder)
            folders[family] = str(folder)
        return folders[family]

    return make


@pytest.fixture(scope="module")
def few_e2e(tmp_path_factory, small_e2e):
    """8 training and 4 validation lines of the shipped E2E data."""
    folder = tmp_path_factory.mktemp("few-e2e")
    lines = (small_e2e / "train.jsonl").read_text().splitlines()
    (folder / "train.jsonl").write_text("\n".join(lines[:8]) + "\n")
    (folder / "validation.jsonl").write_text("\n".join(lines[8:12]) + "\n")
    return folder


@pytest.fixture(scope="module")
def family_run(family_folder, few_e2e, make_tiny_config, tmp_path_factory):
    """family_run(family, method, fast_paths): (config, run folder) of a finished 3-step run that
    checkpointed at step 2 and evaluated at steps 0 and 3; each run once per module. Without
    loss.png: matplotlib would take half of a run's time here, and no test reads it."""
    runs = {}
    patch = pytest.MonkeyPatch()
    patch.setattr("tunesmith.train.run.plot_losses", lambda metrics, path: None)

    def run(family: str, method: str, fast: bool):
        key = family, method, fast
        if key not in runs:
            cfg = make_tiny_config(
                tmp_path_factory.mktemp(f"{family}-{method}-fast-{fast}") / "run",
                model=family_folder(family),
                data={"train": str(few_e2e / "train.jsonl"), "validation": str(few_e2e / "validation.jsonl")}
                | {"max_seq_len": 256},  # the byte-level BPE was trained on completions: prompts run long
                method={"name": method, "dropout": 0.0},
                train={"max_steps": STEPS, "batch_size": 2, "eval_every": STEPS, "log_every": 1}
                | {"save_every": RESUMED_FROM, "fast_paths": fast},
                eval={"samples": 0, "max_new_tokens": 1},
            )
            train(cfg)
            runs[key] = cfg, Path(cfg.out_dir)
        return runs[key]

    yield run
    patch.undo()


def _losses(run) -> list[tuple[str, float]]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(f"{key} at step {m['step']}", m[key]) for m in lines for key in ("train_loss", "val_loss") if key in m]


def _fast_paths_used(run) -> dict[str, str]:
    return json.loads((run / "summary.json").read_text())["fast_paths_used"]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", FAMILIES)
def test_three_steps_take_the_same_losses_with_fast_paths_on_and_off(family, method, family_run):
    """Packed batches and every kernel against padded batches and transformers' own modules, float32:
    the same validation loss before training, the same loss at each step, the same after."""
    on, off = (family_run(family, method, fast)[1] for fast in (True, False))
    names = ["val_loss at step 0", *(f"train_loss at step {step}" for step in (1, 2, 3)), "val_loss at step 3"]
    assert [name for name, _ in _losses(on)] == [name for name, _ in _losses(off)] == names
    for (name, fast), (_, plain) in zip(_losses(on), _losses(off), strict=True):
        assert fast == pytest.approx(plain, rel=1e-5), name
    assert _fast_paths_used(on)["packed_attention"].startswith("on")
    assert _fast_paths_used(off)["label_only_loss"] == "off: train.fast_paths is false"


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", FAMILIES)
def test_a_resumed_run_ends_where_the_straight_one_does(family, method, family_run, tmp_path):
    """The fast-path run resumed from its step-2 checkpoint, with everything written after it removed
    (as a run killed after step 2 leaves its folder): the same losses and bit-identical final weights."""
    cfg, straight = family_run(family, method, True)
    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed)
    for written_later in ("adapter", "merged", "checkpoints/best", "summary.json"):
        path = resumed / written_later
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    assert [p.name for p in (resumed / "checkpoints").iterdir()] == [f"step-{RESUMED_FROM:06d}"]
    train(cfg.model_copy(update={"out_dir": str(resumed)}), resume=True)
    assert _losses(resumed) == _losses(straight)
    expected, again = load_file(straight / WEIGHTS[method]), load_file(resumed / WEIGHTS[method])
    assert expected.keys() == again.keys()
    different = [name for name in expected if not torch.equal(expected[name], again[name])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[0]}"
