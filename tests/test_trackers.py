"""`train.report_to`: TensorBoard events, an MLflow run and a W&B run hold what metrics.jsonl holds."""

import importlib.util
import json

import pytest
from mlflow import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tunesmith.cli import EXIT_USER_ERROR, main
from tunesmith.errors import TunesmithError
from tunesmith.train.recipe import train


@pytest.fixture(scope="module")
def tracked_run(make_tiny_config, tmp_path_factory):
    folder = tmp_path_factory.mktemp("trackers")
    store = (folder / "mlflow-store").as_uri()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", store)
        patch.setenv("WANDB_MODE", "offline")  # written under the run folder, nothing sent
        patch.setenv("WANDB_SILENT", "true")
        cfg = make_tiny_config(
            folder / "run",
            train={
                "max_steps": 6,
                "eval_every": 3,
                "log_every": 2,
                "report_to": ["tensorboard", "mlflow", "wandb"],
                "wandb": {"project": "tracker-test", "tags": ["tiny"]},
            },
            eval={"samples": 0},
        )
        train(cfg)
    metrics = [json.loads(line) for line in (folder / "run/metrics.jsonl").read_text().splitlines()]
    return folder / "run", store, metrics


def _series(metrics: list[dict], key: str) -> list[tuple[int, float]]:
    return [(m["step"], m[key]) for m in metrics if key in m]


def _same(got: list[tuple[int, float]], expected: list[tuple[int, float]]) -> bool:
    """Same steps, same values (TensorBoard keeps float32)."""
    return [s for s, _ in got] == [s for s, _ in expected] and [v for _, v in got] == pytest.approx(
        [v for _, v in expected], rel=1e-6
    )


def test_tensorboard_events_hold_every_metric_and_the_config(tracked_run):
    run, _, metrics = tracked_run
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    keys = {k for m in metrics for k in m} - {"step"}
    assert set(events.Tags()["scalars"]) == keys
    for key in keys:
        got = [(e.step, e.value) for e in events.Scalars(key)]
        assert _same(got, _series(metrics, key)), key
    config = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "report_to:" in config and "max_steps: 6" in config


def test_mlflow_run_has_params_metrics_and_run_folder(tracked_run):
    run, store, metrics = tracked_run
    client = MlflowClient(tracking_uri=store)
    run_id = (run / "mlflow_run_id").read_text()
    recorded = client.get_run(run_id)
    assert recorded.info.status == "FINISHED"
    assert recorded.data.params["train.lr"] == "0.005"
    assert recorded.data.params["method.name"] == "lora"
    for key in ("train_loss", "val_loss", "lr"):
        history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        assert _same(history, _series(metrics, key)), key
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"adapter", "config.yaml", "metrics.jsonl", "summary.json", "loss.png"} <= artifacts
    assert not artifacts & {"checkpoints", "merged", "tensorboard"}


def test_wandb_offline_run_lives_in_the_run_folder_with_every_metric(tracked_run):
    run, _, metrics = tracked_run
    run_id = (run / "wandb_run_id").read_text()
    (record,) = (run / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")
    # W&B's offline record is protobuf: its strings (metric names, the project) are stored as they are.
    data = record.read_bytes()
    assert b"tracker-test" in data and b"tiny" in data
    for key in {k for m in metrics for k in m} - {"step"}:
        assert key.encode() in data, key


def test_a_tracker_that_is_not_installed_is_a_one_line_config_error(tmp_path, tiny_config, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(
        TunesmithError, match=r"train.report_to: mlflow is not installed: pip install 'tunesmith\[mlflow\]'"
    ):
        tiny_config(train={"report_to": ["mlflow"]})
    config = tmp_path / "c.yaml"
    config.write_text("data: {train: t.jsonl}\ntrain: {report_to: [tensorboard, mlflow]}\n")
    assert main(["train", str(config)]) == EXIT_USER_ERROR
    assert "mlflow is not installed" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
