"""The encoder recipe end to end on a tiny random BERT: each objective trains, exports and evaluates."""

import json
import shutil

import numpy as np
import pytest
import torch
from encoder_helpers import PAPERS, plain_maxsim

from tunesmith.encoders.model import load_encoder
from tunesmith.encoders.recipe import HEAD_FILE, train_encoder
from tunesmith.errors import TunesmithError
from tunesmith.evaluate.encoders import run_encoder_evaluation
from tunesmith.models.vocabulary import Added


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("method", ["full", "lora"])
def test_contrastive_run_exports_and_evaluates(encoder_config, method, tmp_path):
    cfg = encoder_config(method={"name": method, "objective": "contrastive", "r": 4, "alpha": 8})
    summary = train_encoder(cfg)
    run = tmp_path / "run"
    assert summary.steps == 4
    rows = _metrics(run)
    assert [r["step"] for r in rows if "val_loss" in r] == [0, 2, 4]
    assert all(r["examples_per_second"] > 0 for r in rows if "train_loss" in r)
    assert (run / "merged" / "modules.json").is_file() and (run / "summary.json").is_file()
    assert (run / "adapter" / "adapter_config.json").is_file() == (method == "lora")
    result = run_encoder_evaluation(cfg, None, str(tmp_path / "eval"))
    assert set(result["variants"]) == {"bm25", "zero_shot", "finetuned", "hybrid_zero_shot", "hybrid_finetuned"}
    assert result["hybrid_gain"]["ndcg@10"]["baseline"] in {"bm25", "zero_shot", "hybrid_zero_shot"}
    assert set(result["hybrid_gain_vs_each"]) == {"bm25", "zero_shot", "hybrid_zero_shot"}
    assert result["items"] == 2 and result["corpus"] == len(PAPERS)
    assert set(result["gain"]["ndcg@10"]) == {"baseline", "value", "low", "high"}
    assert set(result["gain_vs_each"]) == {"bm25", "zero_shot"}
    for name in ("eval.json", "report.html", "report.md"):
        assert (tmp_path / "eval" / name).is_file()
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "BM25" in report and "## Does fine-tuning help hybrid search?" in report


def test_late_interaction_run_is_scored_against_the_base_scored_the_same_way(encoder_config, tmp_path):
    from sentence_transformers import SentenceTransformer

    cfg = encoder_config(encoder={"scoring": "maxsim", "hard_negatives": 1})
    summary = train_encoder(cfg)
    assert summary.best_val_loss < summary.initial_val_loss
    result = run_encoder_evaluation(cfg, None, str(tmp_path / "eval"))
    encoders = {"zero_shot", "zero_shot_maxsim", "finetuned"}
    assert set(result["variants"]) == {"bm25", *encoders, *(f"hybrid_{v}" for v in encoders)}
    assert set(result["gain_vs_each"]) == {"bm25", "zero_shot", "zero_shot_maxsim"}
    assert set(result["hybrid_gain_vs_each"]) == {
        "bm25",
        *encoders - {"finetuned"},
        "hybrid_zero_shot",
        "hybrid_zero_shot_maxsim",
    }
    assert "late interaction" in (tmp_path / "eval" / "report.md").read_text()
    # The fine-tune's ranking is MaxSim over what sentence-transformers gives as the export's token embeddings.
    folder = str(tmp_path / "run" / "merged")
    model = SentenceTransformer(folder, device="cpu")
    queries = [title for title, _ in PAPERS[6:8]]
    embedded = [
        [torch.nn.functional.normalize(t, dim=-1) for t in model.encode(texts, output_value="token_embeddings")]
        for texts in (queries, [text for _, text in PAPERS])
    ]
    top = plain_maxsim(*embedded).argmax(1).tolist()
    assert [s["finetuned"] for s in result["samples"]] == [f"top 1: {PAPERS[i][1][:200]}" for i in top]


def test_retrieval_evaluation_reads_the_judgements_named_by_eval_qrels(encoder_config, beir_folder, tmp_path):
    folder = tmp_path / "beir"
    shutil.copytree(beir_folder, folder)
    with (folder / "queries.jsonl").open("a") as queries:
        queries.write(json.dumps({"_id": "q6-2", "text": PAPERS[6][0].lower()}) + "\n")
    judgements = ["query-id\tcorpus-id\tscore", "q6\td6\t1", "q6-2\td6\t1", "q7\td7\t1"]
    (folder / "qrels" / "test_all.tsv").write_text("\n".join(judgements) + "\n")
    result = run_encoder_evaluation(
        encoder_config(data={"test": str(folder)}, eval={"qrels": "test_all"}), None, str(tmp_path / "eval")
    )
    assert result["items"] == 3
    assert any("The 3 queries are 2 groups" in note for note in result["notes"])
    missing = encoder_config(data={"test": str(folder)}, eval={"qrels": "test_every"})
    with pytest.raises(TunesmithError, match=r"no qrels/test_every.tsv \(found: dev.tsv, test.tsv, test_all.tsv"):
        run_encoder_evaluation(missing, None, str(tmp_path / "eval2"))
    with pytest.raises(TunesmithError, match="eval.qrels"):
        encoder_config(eval={"qrels": "../train"})


def test_maxsim_is_refused_outside_contrastive_training(encoder_config):
    with pytest.raises(TunesmithError, match="encoder.scoring=maxsim .* needs method.objective=contrastive"):
        encoder_config(method={"objective": "classification"}, encoder={"scoring": "maxsim"})


@pytest.mark.parametrize("max_seq_len", [None, 16])
def test_export_round_trip_through_sentence_transformers(encoder_config, tmp_path, max_seq_len):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    train_encoder(encoder_config(encoder={"max_seq_len": max_seq_len}))
    folder = tmp_path / "run" / "merged"
    texts = [text for _, text in PAPERS] + ["a short one", "a much longer sentence " * 20]
    ours = load_encoder(str(folder)).encode(texts, batch_size=3)
    theirs = SentenceTransformer(str(folder), device="cpu")
    assert theirs.max_seq_length == (max_seq_len or 128)  # the tiny BERT's positions when not set
    assert np.abs(ours - theirs.encode(texts, batch_size=4, convert_to_numpy=True)).max() <= 1e-5
    # Late interaction reads every token's vector: sentence-transformers' token embeddings, normalised.
    tokens, lengths = load_encoder(str(folder)).encode_tokens(texts, batch_size=3)
    their_tokens = theirs.encode(texts, batch_size=4, output_value="token_embeddings")
    assert lengths.tolist() == [len(t) for t in their_tokens]
    assert (tokens - torch.nn.functional.normalize(torch.cat(their_tokens), dim=-1)).abs().max() <= 1e-5
    assert isinstance(AutoModel.from_pretrained(folder), torch.nn.Module)  # also a plain HF folder


@pytest.mark.parametrize("whole_word", [False, True])
def test_mlm_run_lowers_masked_token_loss(encoder_config, tmp_path, whole_word):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(text for _, text in PAPERS * 3) + "\n")
    cfg = encoder_config(
        method={"name": "full", "objective": "mlm"},
        data={"train": str(corpus), "validation": None, "val_fraction": 0.25, "test": None},
        encoder={"whole_word_mask": whole_word, "mlm_probability": 0.3},
        train={"max_steps": 12, "batch_size": 4, "lr": 3e-3, "eval_every": 12},
    )
    summary = train_encoder(cfg)
    assert summary.best_val_loss < summary.initial_val_loss
    encoder = load_encoder(str(tmp_path / "run" / "merged"))  # the body, loadable as an encoder
    assert encoder.encode(["protein folding"]).shape == (1, 32)


@pytest.mark.parametrize("with_decoder", [False, True])
def test_classification_run_reports_against_a_linear_probe(encoder_config, tmp_path, with_decoder, tiny_model_name):
    rows = [{"text": text, "label": "bio" if i in (0, 4) else "ml"} for i, (_, text) in enumerate(PAPERS)] * 2
    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    test.write_text("".join(json.dumps(r) + "\n" for r in rows[:6]))
    cfg = encoder_config(
        method={"name": "full", "objective": "classification"},
        data={"train": str(train), "validation": str(test), "test": str(test)},
        eval={"task": "classification", "decoder": tiny_model_name if with_decoder else None, "few_shot_k": 2},
        train={"max_steps": 6, "batch_size": 4, "lr": 3e-3, "eval_every": 3},
    )
    train_encoder(cfg)
    assert (tmp_path / "run" / HEAD_FILE).is_file()
    result = run_encoder_evaluation(cfg, None, str(tmp_path / "eval"))
    decoders = ["decoder_zero_shot", "decoder_few_shot"] if with_decoder else []
    assert list(result["variants"]) == ["linear_probe", *decoders, "finetuned"]
    assert set(result["variants"]["finetuned"]["metrics"]) == {"accuracy", "macro_f1"}
    assert set(result["gain_vs_each"]) == {"linear_probe", *decoders}
    best = max(["linear_probe", *decoders], key=lambda v: result["variants"][v]["metrics"]["accuracy"]["value"])
    assert result["gain"]["accuracy"]["baseline"] == best
    if with_decoder:
        # Prompted with the label set, scored on the same six texts; the few-shot prompts are longer.
        zero, few = (result["variants"][v] for v in decoders)
        assert set(zero["metrics"]) == {"accuracy", "macro_f1", "parse_rate"}
        assert few["cost"]["prompt_tokens"] > zero["cost"]["prompt_tokens"]
        assert result["few_shot"] is None  # the decoder's bookkeeping stays out of the encoder's result
        assert "decoder, few-shot" in (tmp_path / "eval" / "report.md").read_text()


def test_resume_ends_with_the_same_weights(encoder_config, tmp_path):
    from safetensors.torch import load_file

    cfg = encoder_config(
        method={"name": "full", "objective": "mlm"},
        data={"train": str(tmp_path / "corpus.txt"), "validation": None, "val_fraction": 0.25, "test": None},
        encoder={"whole_word_mask": True},
        train={"max_steps": 4, "save_every": 2, "batch_size": 2},
    )
    (tmp_path / "corpus.txt").write_text("\n\n".join(text for _, text in PAPERS) + "\n")
    train_encoder(cfg)
    uninterrupted = load_file(tmp_path / "run" / "merged" / "model.safetensors")
    # The run folder still holds the step-2 checkpoint: continuing from it must retrace steps 3 and 4
    # exactly (data order and masking are functions of the step).
    train_encoder(cfg, resume=True)
    resumed = load_file(tmp_path / "run" / "merged" / "model.safetensors")
    assert all(torch.equal(uninterrupted[k], resumed[k]) for k in uninterrupted)


def test_a_nan_loss_stops_an_encoder_run_and_never_reaches_the_metrics(encoder_config, tmp_path, monkeypatch):
    from tunesmith.encoders.tasks import ContrastiveTask

    loss_sum = ContrastiveTask.loss_sum

    def diverged(self, body, inputs):
        loss, correct = loss_sum(self, body, inputs)
        return (loss * float("nan"), correct) if body.training else (loss, correct)

    monkeypatch.setattr(ContrastiveTask, "loss_sum", diverged)
    with pytest.raises(TunesmithError, match=r"step 1: train_loss=nan.*train.nan_policy: stop"):
        train_encoder(encoder_config())
    assert [r["step"] for r in _metrics(tmp_path / "run")] == [0]


def test_max_seq_len_beyond_the_position_embeddings_is_refused(encoder_config):
    with pytest.raises(TunesmithError, match="encoder.max_seq_len 200 is more than .* has positions for \\(128\\)"):
        train_encoder(encoder_config(encoder={"max_seq_len": 200}))


def test_mlm_head_is_tied_to_the_word_embeddings(encoder_config, tmp_path):
    from tunesmith.encoders.recipe import _build_task

    (tmp_path / "corpus.txt").write_text("\n\n".join(text for _, text in PAPERS) + "\n")
    cfg = encoder_config(
        method={"name": "full", "objective": "mlm"},
        data={"train": str(tmp_path / "corpus.txt"), "validation": None, "val_fraction": 0.25, "test": None},
    )
    encoder = load_encoder(cfg.model)  # a plain BertModel folder: no MLM head in the checkpoint
    task = _build_task(cfg, encoder, Added())
    assert task.head.predictions.decoder.weight is encoder.model.embeddings.word_embeddings.weight
