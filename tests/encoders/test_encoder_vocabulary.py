"""`tokenizer.add_tokens` on an encoder: domain words become one token each before the task tokenizes
anything, their rows start as the mean of the pieces they replace, and the run saves the tokenizer."""

import json

import pytest
import torch
from encoder_helpers import PAPERS
from safetensors.torch import load_file
from transformers import AutoTokenizer

from tunesmith.encoders.model import load_encoder
from tunesmith.encoders.recipe import _build_task, train_encoder
from tunesmith.models.vocabulary import Added, add_domain_words, grow_embeddings

# Words of PAPERS that MiniLM's WordPiece splits into 2 to 5 pieces.
WORDS = ["convolutional", "perturbations", "multilingual", "pretraining"]


@pytest.fixture
def mlm_config(encoder_config, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(text for _, text in PAPERS * 3) + "\n")

    def make(**sections):
        return encoder_config(
            **{
                "method": {"name": "full", "objective": "mlm"},
                "data": {"train": str(corpus), "validation": None, "val_fraction": 0.25, "test": None},
                "encoder": {"mlm_probability": 0.3},
                "tokenizer": {"add_tokens": WORDS},
                # One epoch: every training window once, so each word is read (18 windows, 4 a step).
                "train": {"max_steps": 5, "batch_size": 4, "lr": 3e-3, "eval_every": 5, "save_every": 2},
            }
            | sections
        )

    return make


@pytest.mark.parametrize("objective", ["mlm", "contrastive"])
def test_added_words_are_one_token_and_start_as_the_mean_of_their_pieces(mlm_config, encoder_config, objective):
    cfg = mlm_config() if objective == "mlm" else encoder_config(tokenizer={"add_tokens": WORDS})  # on BEIR pairs
    encoder = load_encoder(cfg.model)
    old = encoder.model.get_input_embeddings().weight.detach().clone()
    pieces = {word: encoder.tokenizer(word, add_special_tokens=False).input_ids for word in WORDS}
    assert all(len(p) > 1 for p in pieces.values())
    added = add_domain_words(encoder.tokenizer, cfg.tokenizer)
    task = _build_task(cfg, encoder, added)
    tokenizer, table = encoder.tokenizer, encoder.model.get_input_embeddings().weight
    assert added.ids == list(range(len(old), len(old) + len(WORDS))) and table.shape[0] == len(tokenizer)
    assert tokenizer.tokenize("Convolutional networks, multilingual pretraining") == [
        "convolutional",
        "networks",
        ",",
        "multilingual",
        "pretraining",
    ]
    # Whole words only: not cut out of a longer word.
    assert tokenizer.tokenize("nonconvolutional") == ["non", "##con", "##vo", "##lu", "##tion", "##al"]
    assert torch.equal(table[: len(old)], old)
    for word, ids in pieces.items():
        assert torch.allclose(table[tokenizer.convert_tokens_to_ids(word)], old[ids].mean(0), rtol=1e-6, atol=0)
    if objective == "mlm":  # the output rows are the same tensor (tied), with a bias for each
        head = task.head.predictions
        assert head.decoder.weight is table and head.bias.shape == (len(tokenizer),)


def test_an_output_bias_starts_as_the_mean_of_the_pieces_entries():
    """A pretrained MLM head's bias is a per-token prior: a new word starts with its pieces' mean."""
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2))
    with torch.no_grad():
        model.cls.predictions.bias.normal_()
    old = model.cls.predictions.bias.detach().clone()
    grow_embeddings(model, Added(words={50: [3, 7], 51: [9, 10, 11]}), 50)
    bias = model.cls.predictions.bias
    assert bias.shape == (52,) and torch.equal(bias[:50], old)
    assert bias[50].item() == pytest.approx(old[[3, 7]].mean().item())
    assert bias[51].item() == pytest.approx(old[[9, 10, 11]].mean().item())


@pytest.mark.parametrize("method", ["full", "lora"])
def test_an_mlm_run_trains_the_new_rows_and_saves_a_tokenizer_that_round_trips(mlm_config, method, tmp_path):
    cfg = mlm_config(method={"name": method, "objective": "mlm", "r": 4, "alpha": 8, "dropout": 0.0})
    start = load_encoder(cfg.model)
    pieces = {word: start.tokenizer(word, add_special_tokens=False).input_ids for word in WORDS}
    initial = start.model.get_input_embeddings().weight.detach()
    summary = train_encoder(cfg)
    assert summary.steps == 5 and summary.best_val_loss == summary.best_val_loss  # finite, not nan
    merged = tmp_path / "run" / "merged"
    saved = AutoTokenizer.from_pretrained(merged)
    text = "Convolutional networks resist perturbations after multilingual pretraining."
    ids = saved(text).input_ids
    assert saved.convert_ids_to_tokens(ids[1:-1]) == ["convolutional", "networks", "resist", "perturbations"] + [
        "after",
        "multilingual",
        "pretraining",
        ".",
    ]
    assert saved.decode(ids, skip_special_tokens=True) == text.lower()
    weights = load_file(merged / "model.safetensors")["embeddings.word_embeddings.weight"]
    assert weights.shape[0] == len(saved) == len(start.tokenizer) + len(WORDS)
    # Trained: the new rows moved from the means they started at. In full, all of them (the tied
    # output layer gives every row a gradient); under LoRA they are PEFT's trainable tokens, which
    # the frozen tied head does not read: a row moves where its word was read unmasked.
    moved = [
        not torch.allclose(weights[saved.convert_tokens_to_ids(word)], initial[old_ids].mean(0))
        for word, old_ids in pieces.items()
    ]
    assert all(moved) if method == "full" else any(moved)
    assert load_encoder(str(merged)).encode([text]).shape == (1, 32)
    if method == "lora":
        adapter = tmp_path / "run" / "adapter"
        added = [saved.convert_tokens_to_ids(word) for word in WORDS]
        assert json.loads((adapter / "adapter_config.json").read_text())["trainable_token_indices"] == added
        assert AutoTokenizer.from_pretrained(adapter).get_vocab() == saved.get_vocab()


def test_a_resumed_run_with_added_words_ends_with_the_same_weights(mlm_config, tmp_path):
    cfg = mlm_config()
    train_encoder(cfg)
    straight = load_file(tmp_path / "run" / "merged" / "model.safetensors")
    train_encoder(cfg, resume=True)  # from the step-4 checkpoint, with the vocabulary grown again
    resumed = load_file(tmp_path / "run" / "merged" / "model.safetensors")
    assert straight.keys() == resumed.keys() and all(torch.equal(straight[k], resumed[k]) for k in straight)
