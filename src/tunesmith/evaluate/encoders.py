"""`tunesmith eval` for encoder runs: retrieval and classification, into the same eval.json and reports.

Retrieval (`eval.task: retrieval`, `data.test` a BEIR folder): every test query ranks the whole
corpus; variants are BM25, the base encoder zero-shot and the fine-tuned encoder, and the gain is
the fine-tune minus the better of the two baselines (paired bootstrap over queries), plus its
difference to each baseline on its own. With `encoder.scoring: maxsim` the fine-tune ranks by late
interaction (ColBERT's MaxSim over token embeddings), and the base encoder is scored that way too
(`zero_shot_maxsim`), so the gain is over the base however it is used. Hybrid search, BM25 fused
with each encoder by reciprocal rank, is scored too: `hybrid_gain` is BM25 + fine-tune minus the
best system without the fine-tune (BM25 + base encoder included), which answers "does fine-tuning
help the search I would deploy?".

Classification (`method.objective: classification`): the base encoder with a linear probe (logistic
regression on its frozen embeddings, fitted on the training file) against the fine-tuned encoder
and head; with `eval.decoder`, also that LLM zero-shot and few-shot (evaluate/run.py's constrained
label scoring) on the same texts, so the gain is over the best of an encoder and an LLM without
training.

Embeddings are computed in length-sorted batches, normalised once, and cached (evaluate/embedding_cache.py),
so the base encoder's corpus is embedded once however many runs compare against it.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from tunesmith.config import Config, config_from_dict
from tunesmith.encoders.bm25 import BM25
from tunesmith.encoders.data import LabelledText, read_beir, read_labelled
from tunesmith.encoders.model import Encoder, load_encoder
from tunesmith.errors import TunesmithError
from tunesmith.evaluate import metrics
from tunesmith.evaluate.embedding_cache import embed_cached
from tunesmith.evaluate.retrieval_metrics import DEPTH, RRF_K, fuse, query_groups, rank, retrieval_stats
from tunesmith.evaluate.run import base_variants, load_test_items
from tunesmith.evaluate.variants import (
    bootstrap_ci,
    empty_result,
    gains,
    model_folder,
    read_loss_curve,
    read_training_summary,
    run_folder,
    write_result,
)
from tunesmith.precision import autocast, default_device
from tunesmith.runfolder import HEAD_FILE

SIDE_BY_SIDE = 10
# Late interaction: query tokens x document tokens scored at a time (a [queries, documents] block of
# MaxSim): ~256 MB of float32 similarities at 32 tokens a query and 256 a document.
LATE_QUERIES, LATE_DOCUMENTS = 64, 128


def _variant(stats: dict, config: Config, outputs: list[str], mean_tokens: float | None) -> dict:
    return {
        "metrics": {name: bootstrap_ci(s, config.eval) for name, s in stats.items()},
        "cost": {"prompt_tokens": mean_tokens, "generated_tokens": None, "tokens_per_second": None},
        "outputs": outputs,
        "stats": stats,
    }


def _vs_each(variants: dict, tuned: str, bases: tuple[str, ...], config: Config) -> dict:
    """`tuned` minus each base on its own, per metric (paired bootstrap)."""
    return {
        base: {
            name: metrics.paired_difference(
                stats, variants[base]["stats"][name], config.eval.bootstrap_resamples, config.eval.seed
            ).as_dict()
            for name, stats in variants[tuned]["stats"].items()
        }
        for base in bases
    }


def _finish(result: dict, config: Config, run_dir: Path | None, out_dir: str, bases: tuple[str, ...]) -> dict:
    variants = result["variants"]
    result["gain"] = gains(variants, config.eval, bases)
    if "finetuned" in variants:
        result["gain_vs_each"] = _vs_each(variants, "finetuned", bases, config)
        result["training"] = read_training_summary(run_dir)
        result["loss_curve"] = read_loss_curve(run_dir)
    else:
        result["notes"].append(f"no fine-tuned model in {config.out_dir}: base variants only")
    return write_result(result, out_dir)


def _late_interaction_scores(encoder: Encoder, queries: list[str], corpus: list[str], batch_size: int) -> np.ndarray:
    """[queries, documents] MaxSim scores (`objectives.maxsim_scores`) over the whole corpus, in blocks."""
    import torch

    from tunesmith.encoders.objectives import maxsim_scores

    # Documents of similar length share a block: each block is padded to its longest.
    order = sorted(range(len(corpus)), key=lambda i: len(corpus[i]))
    progress = f"embedding {len(corpus)} documents' tokens"
    docs = _blocks(*encoder.encode_tokens([corpus[i] for i in order], batch_size, progress), LATE_DOCUMENTS)
    asked = _blocks(*encoder.encode_tokens(queries, batch_size), LATE_QUERIES)
    with torch.no_grad():
        rows = [torch.cat([maxsim_scores(*q, *d) for d in docs], dim=1) for q in asked]
    scores = np.empty((len(queries), len(corpus)), dtype=np.float32)
    scores[:, order] = torch.cat(rows).numpy()
    return scores


def _blocks(tokens, lengths, texts_per_block: int) -> list[tuple]:
    """(tokens, lengths) of texts back to back -> the same for each run of `texts_per_block` texts."""
    counts = lengths.split(texts_per_block)
    return list(zip(tokens.split([int(c.sum()) for c in counts]), counts, strict=True))


def _mean_tokens(encoder: Encoder, texts: list[str]) -> float:
    return float(np.mean([len(ids) for ids in encoder.tokenizer(texts, truncation=True).input_ids]))


def run_retrieval_evaluation(config: Config, finetuned: str | None, out_dir: str) -> dict:
    if not config.data.test:
        raise TunesmithError("data.test is not set: retrieval evaluation needs a BEIR folder with qrels/test.tsv")
    test = read_beir(config.data.test, config.eval.qrels)
    count = min(len(test.query_ids), config.eval.max_items or len(test.query_ids))
    query_ids, queries = test.query_ids[:count], test.queries[:count]
    position = {doc: i for i, doc in enumerate(test.corpus_ids)}
    relevant = [{position[d]: g for d, g in test.qrels[q].items()} for q in query_ids]
    run_dir = run_folder(finetuned, config)
    result = empty_result(config, "retrieval", run_dir, count, sum(len(r) for r in relevant))
    result["corpus"] = len(test.corpus)
    rankings = {}

    index = BM25(test.corpus)
    rankings["bm25"] = rank(np.stack([index.scores(q) for q in queries]))
    late = config.encoder.scoring == "maxsim"
    # The fine-tune's export carries the encoder.max_seq_len it was trained with; the base reads as many.
    # The base is scored as its checkpoint says (pooled) and, for a late-interaction fine-tune, the same
    # way as the fine-tune: the gain is then over the base used either way.
    names = [("zero_shot", config.model, config.encoder.max_seq_len)]
    names += [("finetuned", model_folder(run_dir), None)] if run_dir else []
    mean_tokens = None
    for variant, model, max_seq_len in names:
        encoder = load_encoder(model, max_seq_len)
        if variant == "zero_shot" or not late:
            corpus = embed_cached(encoder, test.corpus, "documents", config.eval.batch_size)
            rankings[variant] = rank(encoder.encode(queries, config.eval.batch_size) @ corpus.T)
        if late:
            rankings[f"{variant}_maxsim" if variant == "zero_shot" else variant] = rank(
                _late_interaction_scores(encoder, queries, test.corpus, config.eval.batch_size)
            )
        mean_tokens = _mean_tokens(encoder, queries)
    for variant in [v for v in rankings if v != "bm25"]:
        rankings[f"hybrid_{variant}"] = fuse([rankings["bm25"], rankings[variant]])
    for variant, ranked in rankings.items():
        outputs = [test.corpus[r[0]][:200] for r in ranked[:SIDE_BY_SIDE]]
        result["variants"][variant] = _variant(retrieval_stats(ranked, relevant), config, outputs, mean_tokens)
    result["samples"] = [
        {
            "input": queries[i],
            "references": [test.corpus[d][:200] for d in relevant[i]],
            **{v: "top 1: " + result["variants"][v]["outputs"][i] for v in rankings},
        }
        for i in range(min(SIDE_BY_SIDE, count))
    ]
    groups = len(set(query_groups(relevant)))
    if groups < count:
        result["notes"].append(
            f"The {count} queries are {groups} groups judged against the same documents (several queries "
            "written for one document); the bootstrap resamples groups, not queries."
        )
    result["notes"].append(
        f"{count} queries ranked against all {len(test.corpus)} documents (top {DEPTH} kept); BM25 = Okapi "
        f"(k1 1.5, b 0.75) on lower-cased words; hybrid = BM25 and the encoder's top {DEPTH} fused by "
        f"reciprocal rank (k {RRF_K}); metrics in percent."
    )
    bases = tuple(v for v in rankings if v != "finetuned" and not v.startswith("hybrid_"))
    if "hybrid_finetuned" in result["variants"]:
        hybrid_bases = tuple(v for v in rankings if v not in ("finetuned", "hybrid_finetuned"))
        result["hybrid_gain"] = gains(result["variants"], config.eval, hybrid_bases, tuned="hybrid_finetuned")
        result["hybrid_gain_vs_each"] = _vs_each(result["variants"], "hybrid_finetuned", hybrid_bases, config)
    return _finish(result, config, run_dir, out_dir, bases)


def _classifier_predictions(run_dir: Path, texts: list[str], batch_size: int) -> tuple[list[str], Encoder]:
    import torch
    from safetensors import safe_open

    path = run_dir / HEAD_FILE
    if not path.is_file():
        raise TunesmithError(f"{run_dir} has no {HEAD_FILE}: it is not a classification run")
    with safe_open(str(path), "pt") as fh:
        labels = json.loads(fh.metadata()["labels"])
        weight, bias = fh.get_tensor("weight"), fh.get_tensor("bias")
    encoder = load_encoder(model_folder(run_dir))
    encoder.model.eval()
    predictions = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            logits = encoder.pooled(encoder.batch(texts[start : start + batch_size])) @ weight.T + bias
            predictions += [labels[i] for i in logits.argmax(-1).tolist()]
    return predictions, encoder


def _decoder_prompt(text: str, labels: list[str]) -> str:
    return f"Classify the text into one of {', '.join(labels)}.\nText: {text}"


def _decoder_variants(
    config: Config, train: list[LabelledText], test: list[LabelledText], labels: list[str]
) -> dict[str, dict]:
    """`eval.decoder` zero-shot and few-shot on the same texts, scored as `tunesmith eval` scores an
    LLM classifier; the training texts are its few-shot examples."""
    with tempfile.TemporaryDirectory(prefix="tunesmith-decoder-") as folder:
        files = {}
        for split, rows in (("train", train), ("test", test)):
            files[split] = str(Path(folder) / f"{split}.jsonl")
            lines = [json.dumps({"prompt": _decoder_prompt(x.text, labels), "completion": x.label}) for x in rows]
            Path(files[split]).write_text("\n".join(lines) + "\n", encoding="utf-8")
        settings = {**config.eval.model_dump(), "task": "classification", "labels": labels, "general_text": None}
        decoder = config_from_dict(
            {
                "model": config.eval.decoder,
                "out_dir": folder,
                "data": files,
                "eval": settings,
                "train": {"dtype": config.train.dtype},
            }
        )
        scratch = empty_result(decoder, "classification", None, len(test), len(test))
        with autocast(decoder.train.dtype, default_device()):
            base_variants(decoder, load_test_items(decoder), scratch)
    return {f"decoder_{name}": variant for name, variant in scratch["variants"].items()}


def run_encoder_classification(config: Config, finetuned: str | None, out_dir: str) -> dict:
    from sklearn.linear_model import LogisticRegression

    if not config.data.test:
        raise TunesmithError("data.test is not set: classification evaluation needs a held-out text/label file")
    train = read_labelled(config.data.train, config.data.columns)
    test = read_labelled(config.data.test, config.data.columns)[: config.eval.max_items]
    labels = sorted({x.label for x in train})
    gold = [x.label for x in test]
    texts = [x.text for x in test]
    run_dir = run_folder(finetuned, config)
    result = empty_result(config, "encoder classification", run_dir, len(test), len(test))

    base = load_encoder(config.model, config.encoder.max_seq_len)
    size = config.eval.batch_size
    probe = LogisticRegression(max_iter=2000, random_state=config.eval.seed)
    probe.fit(embed_cached(base, [x.text for x in train], "training texts", size), [x.label for x in train])
    predicted = {"linear_probe": list(probe.predict(embed_cached(base, texts, "test texts", size)))}
    if run_dir is not None:
        predicted["finetuned"], _ = _classifier_predictions(run_dir, texts, size)
    tokens = _mean_tokens(base, texts)
    for variant, guesses in predicted.items():
        stats = {
            "accuracy": metrics.accuracy_stats(guesses, gold),
            "macro_f1": metrics.macro_f1_stats(guesses, gold, labels),
        }
        result["variants"][variant] = _variant(stats, config, guesses, tokens)
    bases = ("linear_probe",)
    if config.eval.decoder:
        decoded = _decoder_variants(config, train, test, labels)
        result["variants"] = {"linear_probe": result["variants"].pop("linear_probe"), **decoded, **result["variants"]}
        bases += tuple(decoded)
        result["notes"].append(
            f"decoder: {config.eval.decoder}, prompted with the label set; few-shot: "
            f"{decoded['decoder_few_shot']['shots']:.1f} training texts per prompt on average."
        )
    result["samples"] = [
        {
            "input": texts[i][:300],
            "references": [gold[i]],
            **{v: d["outputs"][i] for v, d in result["variants"].items()},
        }
        for i in range(min(SIDE_BY_SIDE, len(test)))
    ]
    result["notes"].append(
        f"linear probe: logistic regression on the base encoder's frozen embeddings of {len(train)} training texts."
    )
    return _finish(result, config, run_dir, out_dir, bases)


def run_encoder_evaluation(config: Config, finetuned: str | None, out_dir: str) -> dict:
    if config.eval.rag is not None:
        raise TunesmithError(
            f"eval.rag puts passages into a decoder's prompts; an encoder run ({config.method.objective}) has none"
        )
    if config.method.objective == "classification":
        return run_encoder_classification(config, finetuned, out_dir)
    if config.eval.task != "retrieval":
        raise TunesmithError(
            f"an encoder run ({config.method.objective}) is evaluated with eval.task=retrieval, not {config.eval.task}"
        )
    return run_retrieval_evaluation(config, finetuned, out_dir)
