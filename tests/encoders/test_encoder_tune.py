"""`tunesmith tune` on a contrastive encoder: trials scored by retrieval of the validation queries."""

import json

from tunesmith.encoders import data as encoder_data
from tunesmith.evaluate import encoders as encoder_eval
from tunesmith.tune.objective import TrialRunner, resolve_goal, trial_config


def test_a_contrastive_trial_is_scored_by_ndcg_of_the_dev_queries_never_the_test_ones(
    encoder_config, tmp_path, monkeypatch
):
    splits = []

    def spy(folder, split, real=encoder_data.read_beir):
        splits.append(split)
        return real(folder, split)

    monkeypatch.setattr(encoder_data, "read_beir", spy)
    monkeypatch.setattr(encoder_eval, "read_beir", spy)
    raw = encoder_config().model_dump(mode="json")
    cfg = trial_config(raw, {"train.lr": 5e-4}, tmp_path / "trial")
    goal = resolve_goal(cfg)
    assert (goal.metric, goal.direction) == ("ndcg@10", "maximize")

    outcome = TrialRunner(cfg, goal, None)(cfg, lambda step, loss: False)

    assert "test" not in splits and splits.count("dev") == 2  # validation loss in training, then the ranking
    report = json.loads((tmp_path / "trial" / "validation" / "eval.json").read_text())
    assert report["items"] == 2  # the two dev queries of the BEIR folder
    assert outcome.value == report["variants"]["finetuned"]["metrics"]["ndcg@10"]["value"]
    assert 0.0 <= outcome.value <= 100.0 and outcome.val_loss is not None


def test_an_encoder_classifier_trial_is_scored_by_validation_accuracy_at_the_kept_step(encoder_config, tmp_path):
    from tunesmith.runfolder import read_metrics

    texts = tmp_path / "texts.csv"
    rows = [f"a paper on {topic} number {i},{topic}" for i in range(12) for topic in ("proteins", "galaxies")]
    texts.write_text("text,label\n" + "\n".join(rows) + "\n")
    data = {"train": str(texts), "validation": None, "val_fraction": 0.25, "test": None}
    raw = encoder_config(data=data, method={"objective": "classification"}).model_dump(mode="json")
    cfg = trial_config(raw, {}, tmp_path / "trial")
    goal = resolve_goal(cfg)
    assert (goal.metric, goal.in_loop) == ("accuracy", True)

    outcome = TrialRunner(cfg, goal, None)(cfg, lambda step, validation: False)

    best = json.loads((tmp_path / "trial" / "summary.json").read_text())["best_step"]
    kept = next(m for m in read_metrics(tmp_path / "trial") if m["step"] == best and "val_accuracy" in m)
    assert outcome.value == kept["val_accuracy"]
