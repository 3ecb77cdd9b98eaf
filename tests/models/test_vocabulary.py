"""data.chat_template and tokenizer.add_tokens: a base model made a chat model, domain words added."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoTokenizer

from tunesmith.data.formats import Example, Message
from tunesmith.data.tokenize import tokenize_example
from tunesmith.errors import TunesmithError
from tunesmith.models import load_model, resolve_model_path
from tunesmith.models.vocabulary import CHATML_TEMPLATE, load_model_for, load_tokenizer_for
from tunesmith.train.recipe import train

# Phi-3 style: none of its tokens are in SmolLM2's vocabulary, so all three are added.
PHI_TEMPLATE = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + m['content'] + '<|end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
PHI_TOKENS = ["<|end|>", "<|assistant|>", "<|user|>"]
CHAT = [{"role": "user", "content": "Name a fruit."}, {"role": "assistant", "content": "A pear."}]


@pytest.fixture(scope="module")
def base_model(tiny_model_name, tmp_path_factory):
    """The tiny model as a base model: its tokenizer without a chat template."""
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("base")
    path = resolve_model_path(tiny_model_name)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.chat_template = None
    tokenizer.save_pretrained(folder)
    AutoModelForCausalLM.from_pretrained(path).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def phi_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("template") / "phi.jinja"
    path.write_text(PHI_TEMPLATE)
    return path


def _ids(tokenizer, chat) -> torch.Tensor:
    text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids


def _cfg(make_tiny_config, base_model, out, template, tokens=None):
    return make_tiny_config(
        out,
        model=base_model,
        data={"chat_template": template, "chat_template_tokens": tokens},
        train={"max_steps": 3, "eval_every": 3, "save_every": 3, "log_every": 1},
        method={"dropout": 0.0},
    )


@pytest.fixture(scope="module")
def phi_run(make_tiny_config, base_model, phi_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("phi") / "run"
    # `<|user|>` is built from the role name, so the template's literals alone would miss it.
    cfg = _cfg(make_tiny_config, base_model, out, str(phi_file), PHI_TOKENS)
    before = load_model_for(cfg)
    train(cfg)
    return cfg, before, out


def test_a_base_model_is_refused_with_a_pointer_to_the_option(base_model):
    with pytest.raises(TunesmithError, match="no chat template: set data.chat_template"):
        load_model(base_model)


@pytest.mark.parametrize("value", ["llama3", "missing/template.jinja"])
def test_an_unknown_template_is_a_one_line_error(make_tiny_config, base_model, tmp_path, value):
    cfg = _cfg(make_tiny_config, base_model, tmp_path / "run", value)
    with pytest.raises(TunesmithError) as error:
        load_tokenizer_for(cfg.model, cfg.data)
    assert str(error.value) == (
        f"data.chat_template: {value!r} is neither `model`, `chatml` nor a Jinja file that exists"
    )


def test_a_template_files_special_tokens_are_its_literals(make_tiny_config, base_model, phi_file, tmp_path):
    cfg = _cfg(make_tiny_config, base_model, tmp_path / "run", str(phi_file))
    tokenizer = load_tokenizer_for(cfg.model, cfg.data)
    assert tokenizer.convert_tokens_to_ids(["<|end|>", "<|assistant|>"]) == [49152, 49153]
    assert len(tokenizer) == 49154


def test_chatml_needs_no_new_rows_when_the_vocabulary_has_its_tokens(make_tiny_config, base_model, tmp_path):
    cfg = _cfg(make_tiny_config, base_model, tmp_path / "run", "chatml")
    loaded = load_model_for(cfg)
    tokenizer = loaded.tokenizer
    assert loaded.added_ids == []  # SmolLM2's vocabulary has <|im_start|> and <|im_end|> already
    assert loaded.model.get_input_embeddings().weight.shape[0] == 49152
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.chat_template == CHATML_TEMPLATE
    assert tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>user\nName a fruit.<|im_end|>\n<|im_start|>assistant\nA pear.<|im_end|>\n<|im_start|>assistant\n"
    )


def test_chatml_trains_a_base_model_and_merged_renders_the_same(make_tiny_config, base_model, tmp_path):
    out = tmp_path / "run"
    cfg = _cfg(make_tiny_config, base_model, out, "chatml")
    tokenizer = load_tokenizer_for(cfg.model, cfg.data)
    summary = train(cfg)
    assert summary.best_val_loss < summary.initial_val_loss
    merged = load_model(str(out))
    assert merged.tokenizer.chat_template == CHATML_TEMPLATE
    assert merged.tokenizer.apply_chat_template(CHAT, tokenize=False) == tokenizer.apply_chat_template(
        CHAT, tokenize=False
    )
    assert json.loads((out / "merged/chat_rendering.json").read_text())["tools"] == "fallback"


def test_template_tokens_are_added_with_mean_rows(phi_run):
    cfg, before, _ = phi_run
    tokenizer, embedding = before.tokenizer, before.model.get_input_embeddings().weight
    ids = tokenizer.convert_tokens_to_ids(PHI_TOKENS)
    assert sorted(ids) == before.added_ids == [49152, 49153, 49154]
    assert embedding.shape[0] == 49152 + 3
    for token in ids:
        torch.testing.assert_close(embedding[token], embedding[:49152].mean(dim=0))
    assert tokenizer.eos_token == "<|end|>"  # what follows an assistant reply
    assert before.model.generation_config.eos_token_id == tokenizer.convert_tokens_to_ids("<|end|>")


def test_labels_cover_the_end_of_turn_token(phi_run):
    _, before, _ = phi_run
    tokenizer = before.tokenizer
    example = Example(1, (Message("user", "Name a fruit."), Message("assistant", "A pear.")))
    tokenized = tokenize_example(tokenizer, example, 64)
    labelled = [t for t in tokenized.labels if t != -100]
    assert tokenizer.decode(labelled) == "A pear.<|end|>"


def test_under_lora_only_the_added_rows_train(phi_run, base_model):
    _, before, out = phi_run
    weights = load_file(out / "merged/model.safetensors")
    trained = weights["model.embed_tokens.weight"]
    original = before.model.get_input_embeddings().weight.detach()
    assert trained.shape == original.shape
    torch.testing.assert_close(trained[:49152], original[:49152])  # no full copy of the embedding trained
    for token in before.added_ids:
        assert not torch.allclose(trained[token], original[token])
    adapter = json.loads((out / "adapter/adapter_config.json").read_text())
    assert adapter["trainable_token_indices"] == before.added_ids
    used = json.loads((out / "summary.json").read_text())["fast_paths_used"]
    assert used["token_rows"] == "on: 3 added rows trained beside the 49,155-row table, not in a copy of it"


def test_checkpoints_hold_the_trained_rows_not_the_frozen_tied_embedding(phi_run, base_model):
    # The tiny model ties its output layer to the embedding; with added rows trained, PEFT wraps both,
    # and the frozen table must not be saved once per checkpoint under the output layer's alias.
    from torch.distributed.checkpoint import FileSystemReader

    _, before, out = phi_run
    (checkpoint,) = (out / "checkpoints").iterdir()
    saved = FileSystemReader(str(checkpoint)).read_metadata().state_dict_metadata
    model = {name: meta.size for name, meta in saved.items() if name.startswith("model.")}
    rows = before.model.get_input_embeddings().weight.shape
    assert model and all(tuple(size) != tuple(rows) for size in model.values()), model
    assert any("trainable_tokens_delta" in name for name in model)


@pytest.mark.parametrize("folder", ["merged", "adapter"])
def test_the_tokens_and_template_are_saved_with_the_run(phi_run, folder):
    _, before, out = phi_run
    saved = AutoTokenizer.from_pretrained(out / folder)
    assert saved.chat_template == PHI_TEMPLATE
    assert saved.convert_tokens_to_ids(PHI_TOKENS) == before.tokenizer.convert_tokens_to_ids(PHI_TOKENS)
    assert saved.apply_chat_template(CHAT, tokenize=False) == before.tokenizer.apply_chat_template(CHAT, tokenize=False)
    assert saved.eos_token == "<|end|>"


def test_merged_reloads_and_renders_a_chat_identically(phi_run):
    _, before, out = phi_run
    merged = load_model(str(out))
    assert merged.model.get_input_embeddings().weight.shape[0] == 49155
    assert _ids(merged.tokenizer, CHAT).tolist() == _ids(before.tokenizer, CHAT).tolist()
    assert set(before.added_ids) <= set(_ids(merged.tokenizer, CHAT)[0].tolist())


@pytest.mark.parametrize("as_file", [False, True])
def test_domain_words_start_as_the_mean_of_their_old_pieces(make_tiny_config, tiny_model_name, tmp_path, as_file):
    words = ["myocardial", "tachycardia"]
    value = words
    if as_file:
        value = str(tmp_path / "words.txt")
        (tmp_path / "words.txt").write_text("\n".join(words) + "\n\n")
    cfg = make_tiny_config(tmp_path / "run")
    cfg.tokenizer.add_tokens = value
    base = load_model(tiny_model_name)
    loaded = load_model_for(cfg)
    old, new = base.model.get_input_embeddings().weight, loaded.model.get_input_embeddings().weight
    assert new.shape[0] == old.shape[0] + 2
    for word in words:
        pieces = base.tokenizer(word, add_special_tokens=False)["input_ids"]
        assert len(pieces) > 1
        token = loaded.tokenizer.convert_tokens_to_ids(word)
        assert loaded.tokenizer(f"a {word}", add_special_tokens=False)["input_ids"][-1] == token
        torch.testing.assert_close(new[token], old[pieces].mean(dim=0))
    torch.testing.assert_close(new[: old.shape[0]], old)


def test_a_peft_user_loads_the_adapter_on_the_resized_base(phi_run, base_model):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    _, before, out = phi_run
    with safe_open(out / "adapter/adapter_model.safetensors", "pt") as saved:
        shapes = {key: saved.get_slice(key).get_shape() for key in saved.keys()}
    assert max(shape[0] for shape in shapes.values()) < 49152  # no copy of the embedding
    tokenizer = AutoTokenizer.from_pretrained(out / "adapter")
    base = AutoModelForCausalLM.from_pretrained(base_model)
    base.resize_token_embeddings(len(tokenizer))
    tuned = PeftModel.from_pretrained(base, out / "adapter").merge_and_unload()
    merged = AutoModelForCausalLM.from_pretrained(out / "merged")
    ids = _ids(tokenizer, CHAT)
    with torch.no_grad():
        torch.testing.assert_close(tuned(input_ids=ids).logits, merged(input_ids=ids).logits, atol=1e-4, rtol=1e-4)
