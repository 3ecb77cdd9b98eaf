"""The config's contract with its user: errors that say what to write instead, and who wrote the wrong thing."""

from pathlib import Path

import pytest
from pydantic import BaseModel

from tunesmith.config import Config, config_from_dict, field_names, load_config, main
from tunesmith.config_docs import COMMAND, render_markdown
from tunesmith.config_names import FOREIGN_NAMES, NOTES
from tunesmith.errors import TunesmithError

DATA = {"train": "train.jsonl"}
REFERENCE = Path(__file__).resolve().parents[1] / "docs/configuration.md"


def _error(raw: dict, overrides=(), source="cfg.yaml") -> str:
    with pytest.raises(TunesmithError) as error:
        config_from_dict(raw, source, list(overrides))
    return str(error.value)


def test_every_foreign_name_points_at_a_real_key():
    known = set(field_names(Config))
    assert {target for target in FOREIGN_NAMES.values() if target not in known} == set()
    assert set(NOTES) <= set(FOREIGN_NAMES)


@pytest.mark.parametrize(
    "raw, suggestion",
    [
        # names from transformers / TRL / PEFT / Axolotl / LLaMA-Factory, at the top or inside a section
        ({"learning_rate": 1e-4}, "unknown key 'learning_rate' (did you mean 'train.lr'?)"),
        ({"train": {"learning_rate": 1e-4}}, "unknown key 'train.learning_rate' (did you mean 'train.lr'?)"),
        ({"num_train_epochs": 3}, "(did you mean 'train.epochs'?)"),
        ({"train": {"num_epochs": 3}}, "(did you mean 'train.epochs'?)"),
        ({"per_device_train_batch_size": 4}, "(did you mean 'train.batch_size'?)"),
        ({"micro_batch_size": 4}, "(did you mean 'train.batch_size'?)"),
        ({"data": {"batch_size": 4}}, "unknown key 'data.batch_size' (did you mean 'train.batch_size'?)"),
        ({"gradient_accumulation_steps": 4}, "(did you mean 'train.grad_accum'?)"),
        ({"lora_r": 8}, "(did you mean 'method.r'?)"),
        ({"method": {"lora_alpha": 16}}, "unknown key 'method.lora_alpha' (did you mean 'method.alpha'?)"),
        ({"lora_dropout": 0.05}, "(did you mean 'method.dropout'?)"),
        ({"lora_target_modules": ["q_proj"]}, "(did you mean 'method.target_modules'?)"),
        ({"max_seq_length": 1024}, "(did you mean 'data.max_seq_len'?)"),
        ({"sequence_len": 1024}, "(did you mean 'data.max_seq_len'?)"),
        ({"cutoff_len": 1024}, "(did you mean 'data.max_seq_len'?)"),
        ({"warmup_ratio": 0.1}, "(did you mean 'train.warmup_steps'? it counts optimizer steps, not a share of them)"),
        ({"warmup_steps": 5}, "(did you mean 'train.warmup_steps'?)"),
        ({"weight_decay": 0.01}, "(did you mean 'train.weight_decay'?)"),
        ({"max_grad_norm": 1.0}, "(did you mean 'train.max_grad_norm'?)"),
        ({"seed": 1}, "(did you mean 'train.seed'?)"),
        ({"output_dir": "runs/x"}, "(did you mean 'out_dir'?)"),
        ({"model_name_or_path": "gpt2"}, "(did you mean 'model'?)"),
        ({"base_model": "gpt2"}, "(did you mean 'model'?)"),
        ({"eval_steps": 10}, "(did you mean 'train.eval_every'?)"),
        ({"save_steps": 10}, "(did you mean 'train.save_every'?)"),
        ({"logging_steps": 10}, "(did you mean 'train.log_every'?)"),
        ({"bf16": True}, "(did you mean 'train.dtype'? auto, float32 or bfloat16)"),
        ({"train": {"fp16": True}}, "(did you mean 'train.dtype'? auto, float32 or bfloat16)"),
        # tunesmith's own name in the wrong section
        ({"lr": 1e-4}, "unknown key 'lr' (did you mean 'train.lr'?)"),
        ({"train": {"r": 8}}, "unknown key 'train.r' (did you mean 'method.r'?)"),
        ({"temperature": 0.5}, "(did you mean 'eval.temperature' or 'encoder.temperature' or 'rl.temperature'?)"),
        # misspellings, of tunesmith's names or of a foreign one
        ({"train": {"lerning_rate": 1e-4}}, "(did you mean 'train.lr'?)"),
        ({"train": {"epoch": 2}}, "unknown key 'train.epoch' (did you mean 'train.epochs'?)"),
        ({"data": {"max_len": 64}}, "unknown key 'data.max_len' (did you mean 'data.max_seq_len'?)"),
        ({"train": {"early_stopping": {"patiense": 2}}}, "(did you mean 'train.early_stopping.patience'?)"),
        ({"trian": {}}, "unknown key 'trian' (did you mean 'train'?)"),
        # nothing near: no guess
        ({"frobnicate": 1}, "unknown key 'frobnicate'"),
    ],
)
def test_unknown_keys_suggest_the_key_the_user_meant(raw, suggestion):
    message = _error({"data": DATA, **raw})
    assert message.startswith("cfg.yaml: invalid config: ")
    assert suggestion in message
    if "did you mean" not in suggestion:
        assert "did you mean" not in message


@pytest.mark.parametrize(
    "file_keys, overrides, expected",
    [
        ({}, ["train.lrr=1"], "override 'train.lrr=1': unknown key 'train.lrr' (did you mean 'train.lr'?)"),
        ({}, ["train.lr=-1"], "override 'train.lr=-1': train.lr: Input should be greater than 0 (got -1)"),
        (
            {},
            ["train.lr=1", "train.lr=-1"],
            "override 'train.lr=-1': train.lr: Input should be greater than 0 (got -1)",
        ),
        (
            {"train": {"lr": -1}},
            ["train.epochs=2"],
            "cfg.yaml: invalid config: train.lr: Input should be greater than 0 (got -1)",
        ),
        (
            {"train": {"lrr": 1}},
            ["method.r=0"],
            "override 'method.r=0': method.r: Input should be greater than or equal to 1 (got 0); "
            "cfg.yaml: invalid config: unknown key 'train.lrr' (did you mean 'train.lr'?)",
        ),
    ],
)
def test_an_error_is_blamed_on_the_override_or_the_file_that_caused_it(file_keys, overrides, expected):
    assert _error({"data": DATA, **file_keys}, overrides) == expected


def test_load_config_blames_the_override_not_the_yaml(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("data:\n  train: train.jsonl\n")
    with pytest.raises(TunesmithError) as error:
        load_config(path, ["train.lrr=1"])
    assert str(error.value) == "override 'train.lrr=1': unknown key 'train.lrr' (did you mean 'train.lr'?)"


def _row(markdown: str, key: str) -> list[str]:
    """The table cells of `key`'s row: key, type, default, description."""
    (row,) = [line for line in markdown.splitlines() if line.startswith(f"| `{key}` |")]
    return [cell.strip() for cell in row.strip("|").split(" | ")]


def test_the_committed_configuration_reference_is_up_to_date():
    assert REFERENCE.read_text(encoding="utf-8") == render_markdown(Config), (
        f"docs/configuration.md is stale: run `{COMMAND}` and commit it"
    )


def _fields(model, prefix=""):
    """(dotted key, FieldInfo) of every field of every section, nested ones too."""
    for name, field in model.model_fields.items():
        yield prefix + name, field
        for candidate in getattr(field.annotation, "__args__", (field.annotation,)):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                yield from _fields(candidate, f"{prefix}{name}.")


def test_the_reference_has_every_key_with_its_description():
    markdown = render_markdown(Config)
    fields = dict(_fields(Config))
    assert list(fields) == field_names(Config)
    for key, field in fields.items():
        assert field.description, f"{key} has no description"
        assert _row(markdown, key)[3] == field.description.replace("|", "\\|"), key
    for section in ("data", "method", "train", "train.early_stopping", "eval", "distributed", "encoder"):
        assert f"\n## {section}\n" in markdown


@pytest.mark.parametrize(
    "key, type_, default",
    [
        ("model", "string", "`smollm2-135m-instruct`"),
        ("data.train", "string", "**required**"),
        ("data.max_seq_len", "integer, ≥ 8", "`512`"),
        ("train.nan_policy", "one of `stop`, `continue`", "`stop`"),
        ("train.lr", "number, > 0 and ≤ 1.0 or `auto`", "`0.0002`"),
        ("train.max_grad_norm", "number or null, > 0", "`1.0`"),
        ("train.early_stopping", "section [`train.early_stopping`](#trainearly_stopping) or null", "`null`"),
        ("train.early_stopping.patience", "integer, ≥ 1", "`3`"),
        ("train.report_to", "list of `tensorboard`, `mlflow`, `wandb`", "`[]`"),
        ("method.target_modules", "list of string or `all-linear`", "`all-linear`"),
        ("data.columns", "mapping of string to string or null", "`null`"),
        ("data.packing", "boolean", "`true`"),
        (
            "eval.task",
            "one of `generation`, `qa`, `classification`, `text`, `retrieval`, `preference`, `tool_calls`, `graded`",
            "`generation`",
        ),
        ("eval.decoder", "string or null", "`null`"),
        ("method", "section [`method`](#method)", "see its section"),
    ],
)
def test_the_reference_gives_each_key_its_type_choices_and_default(key, type_, default):
    assert _row(render_markdown(Config), key)[1:3] == [type_, default]


def test_the_command_writes_the_reference(tmp_path, capsys):
    target = tmp_path / "docs/configuration.md"
    assert main(["--markdown", str(target)]) == 0
    assert target.read_text(encoding="utf-8") == render_markdown(Config)
    assert capsys.readouterr().out.strip() == str(target)
