"""The library's front: ``tunesmith.train``, ``tunesmith.evaluate`` and ``tunesmith.load``.

The CLI calls these same functions. A config is a path to YAML, a dict, or a Config; overrides
are dotted keys (``**{"train.lr": 1e-3}``, or ``train__lr=1e-3`` as a keyword).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tunesmith.config import Config, config_from_dict, load_config
from tunesmith.data.sources import check_data_paths
from tunesmith.errors import TunesmithError
from tunesmith.models import LoadedModel, load_model
from tunesmith.runfolder import MERGED, locked


def as_config(config: Config | dict | str | Path, overrides: dict | None = None) -> Config:
    """A validated Config from any of the accepted forms, with dotted overrides applied."""
    texts = [f"{key.replace('__', '.')}={json.dumps(value)}" for key, value in (overrides or {}).items()]
    if isinstance(config, (str, Path)):
        return load_config(config, texts)
    raw = config.model_dump(mode="json") if isinstance(config, Config) else json.loads(json.dumps(config))
    return config_from_dict(raw, overrides=texts)


def recipe_and_evaluation(cfg: Config):
    """The decoder recipe and evaluation, or the encoder ones for an encoder objective."""
    from tunesmith.encoders.recipe import is_encoder_run

    if is_encoder_run(cfg):
        from tunesmith.encoders.recipe import train_encoder
        from tunesmith.evaluate.encoders import run_encoder_evaluation

        return train_encoder, run_encoder_evaluation
    from tunesmith.evaluate.run import run_evaluation
    from tunesmith.train.recipe import train as train_decoder

    return train_decoder, run_evaluation


# The data files each command reads (evaluation draws few-shot demonstrations from train).
TRAIN_DATA, EVAL_DATA = ("train", "validation", "test"), ("train", "test")


def check_launch(cfg: Config, resume: bool, overwrite: bool) -> None:
    """Before `tunesmith train --nproc-per-node N` starts its processes: what each would refuse, once."""
    from tunesmith.encoders.recipe import ONE_PROCESS_ONLY, is_encoder_run
    from tunesmith.train.run import check_out_dir

    if is_encoder_run(cfg):
        raise TunesmithError(ONE_PROCESS_ONLY)
    check_data_paths(cfg.data, TRAIN_DATA)
    check_out_dir(Path(cfg.out_dir), resume, overwrite)


def train(config: Config | dict | str | Path, *, resume: bool = False, overwrite: bool = False, **overrides):
    """Fine-tune as the config says; the run folder is ``out_dir``. Returns the run's summary
    (steps, trained tokens, best step and validation loss, wall time)."""
    cfg = as_config(config, overrides)
    check_data_paths(cfg.data, TRAIN_DATA)
    run, _ = recipe_and_evaluation(cfg)
    if "TORCHELASTIC_RUN_ID" in os.environ:  # one process of a launch: its launcher holds the folder
        return run(cfg, resume=resume, overwrite=overwrite)
    with locked(Path(cfg.out_dir)):
        return run(cfg, resume=resume, overwrite=overwrite)


def evaluate(config: Config | dict | str | Path, run_dir: str | Path | None = None, out_dir=None, **overrides) -> dict:
    """Base zero-shot, few-shot and the fine-tuned model of ``run_dir`` (default: the config's
    out_dir when it holds a run) on the config's test data; writes eval.json and the reports to
    ``out_dir`` (default: beside the run evaluated) and returns eval.json's content."""
    cfg = as_config(config, overrides)
    check_data_paths(cfg.data, EVAL_DATA)
    _, run = recipe_and_evaluation(cfg)
    return run(cfg, None if run_dir is None else str(run_dir), str(out_dir or run_dir or cfg.out_dir))


def load(run_dir: str | Path) -> LoadedModel:
    """A run's fine-tuned model (its merged weights) and tokenizer, ready for generation."""
    loaded = load_model(str(Path(run_dir) / MERGED))
    loaded.model.eval()
    return loaded
