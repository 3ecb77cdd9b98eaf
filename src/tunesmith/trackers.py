"""Experiment trackers: every metrics.jsonl line mirrored to TensorBoard, MLflow and/or Weights & Biases
(`train.report_to`).

Each is an optional extra (`pip install 'tunesmith[tensorboard]'`, `'tunesmith[mlflow]'`,
`'tunesmith[wandb]'`), imported only when a run asks for it. metrics.jsonl stays the record; a
tracker is a view of it, fed by `runfolder.MetricsLog` as each line is written.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import time
from pathlib import Path
from urllib.parse import urlparse

import yaml

from tunesmith.errors import TunesmithError
from tunesmith.runfolder import ADAPTER, CHECKPOINTS, CONFIG, MERGED

# tracker -> the module it needs
TRACKERS = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}
TENSORBOARD_DIR = "tensorboard"
MLFLOW_RUN_ID_FILE = "mlflow_run_id"
MLFLOW_EXPERIMENT = "tunesmith"
WANDB_DIR = "wandb"
WANDB_RUN_ID_FILE = "wandb_run_id"
# Not sent to MLflow as artifacts: resumable training state, the trackers' own files, and the merged
# model of a LoRA run (base model + adapter/ rebuild it; it would double the disk used).
ARTIFACTS_SKIPPED = {CHECKPOINTS, TENSORBOARD_DIR, "mlruns", MLFLOW_RUN_ID_FILE, WANDB_DIR, WANDB_RUN_ID_FILE}


def require_trackers(names: list[str]) -> list[str]:
    """The names back, or one error naming every tracker asked for that is not installed."""
    missing = [n for n in names if importlib.util.find_spec(TRACKERS[n]) is None]
    if missing:
        raise TunesmithError(
            "train.report_to: " + "; ".join(f"{n} is not installed: pip install 'tunesmith[{n}]'" for n in missing)
        )
    return names


def _scalars(record: dict) -> dict[str, float]:
    return {
        k: float(v) for k, v in record.items() if k != "step" and isinstance(v, int | float) and not isinstance(v, bool)
    }


def _flat(config: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = str(value)
    return out


class TensorBoardTracker:
    """Event files under RUN/tensorboard: one scalar series per metrics key, the config as text."""

    def __init__(self, run: Path, config_text: str, resume_step: int | None):
        from torch.utils.tensorboard import SummaryWriter

        # On resume, events after the checkpoint are dropped, as metrics.jsonl drops its lines; a
        # fresh run (--overwrite) starts with no events of the run it replaces.
        purge = resume_step + 1 if resume_step is not None else None
        if resume_step is None:
            shutil.rmtree(run / TENSORBOARD_DIR, ignore_errors=True)
        self.writer = SummaryWriter(log_dir=str(run / TENSORBOARD_DIR), purge_step=purge)
        if resume_step is None:
            # Markdown: indented four spaces, the YAML shows as a code block.
            self.writer.add_text("config", "".join(f"    {line}\n" for line in config_text.splitlines()), 0)

    def log(self, record: dict) -> None:
        for key, value in _scalars(record).items():
            self.writer.add_scalar(key, value, record["step"])
        self.writer.flush()

    def close(self, run: Path) -> None:
        self.writer.close()


class MLflowTracker:
    """One MLflow run per tunesmith run (kept across --resume): params = resolved config, metrics,
    and the run folder as artifacts at the end. `MLFLOW_TRACKING_URI` if set, else a file store in
    RUN/mlruns."""

    def __init__(self, run: Path, config_text: str, resume_step: int | None):
        uri = os.environ.get("MLFLOW_TRACKING_URI") or (run / "mlruns").resolve().as_uri()
        if urlparse(uri).scheme in ("", "file"):
            # MLflow 3 keeps its file store for those who opt in; a local, server-less store is the point here.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow import MlflowClient
        from mlflow.entities import Param

        self.client = MlflowClient(tracking_uri=uri)
        id_file = run / MLFLOW_RUN_ID_FILE
        if resume_step is not None and id_file.is_file():
            self.run_id = id_file.read_text().strip()
            return
        experiment = self.client.get_experiment_by_name(MLFLOW_EXPERIMENT)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(MLFLOW_EXPERIMENT)
        self.run_id = self.client.create_run(experiment_id, run_name=run.resolve().name).info.run_id
        id_file.write_text(self.run_id)
        params = [Param(k, v) for k, v in _flat(yaml.safe_load(config_text) or {}).items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params a batch
            self.client.log_batch(self.run_id, params=params[start : start + 100])

    def log(self, record: dict) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        metrics = [Metric(k, v, stamp, record["step"]) for k, v in _scalars(record).items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def close(self, run: Path) -> None:
        lora = (run / ADAPTER).is_dir()
        for item in sorted(run.iterdir()):
            if item.name in ARTIFACTS_SKIPPED or (lora and item.name == MERGED):
                continue
            if item.is_dir():
                self.client.log_artifacts(self.run_id, str(item), artifact_path=item.name)
            else:
                self.client.log_artifact(self.run_id, str(item))
        self.client.set_terminated(self.run_id, "FINISHED")


class WandbTracker:
    """One W&B run per tunesmith run (kept across --resume: its id is saved in the run folder), the
    resolved config as its config, every metrics line at its step. The project, name, entity and tags
    come from train.wandb; W&B's own environment (WANDB_API_KEY, WANDB_MODE=offline) decides where it
    goes, and its local files stay under RUN/wandb."""

    def __init__(self, run: Path, config_text: str, resume_step: int | None):
        import wandb

        config = yaml.safe_load(config_text) or {}
        settings = config.get("train", {}).get("wandb") or {}
        id_file = run / WANDB_RUN_ID_FILE
        resumed = resume_step is not None and id_file.is_file()
        run_id = id_file.read_text().strip() if resumed else wandb.util.generate_id()
        (run / WANDB_DIR).mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=settings.get("project", "tunesmith"),
            name=settings.get("name") or run.resolve().name,
            entity=settings.get("entity"),
            tags=settings.get("tags") or None,
            config=config,
            dir=str(run),
            id=run_id,
            resume="allow" if resumed else None,
            reinit="create_new",
        )
        id_file.write_text(run_id)

    def log(self, record: dict) -> None:
        self.run.log(_scalars(record), step=record["step"])

    def close(self, run: Path) -> None:
        self.run.finish()


def open_trackers(names: list[str], run: Path, resume_step: int | None) -> list:
    """The trackers `names` asks for, fed from the run's config.yaml (written before metrics start)."""
    if not names:
        return []
    require_trackers(names)
    config_path = run / CONFIG
    config_text = config_path.read_text(encoding="utf-8") if config_path.is_file() else ""
    kinds = {"tensorboard": TensorBoardTracker, "mlflow": MLflowTracker, "wandb": WandbTracker}
    return [kinds[name](run, config_text, resume_step) for name in names]
