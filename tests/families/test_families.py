"""Every fast path on tiny random models of each family: it handles the family exactly or steps aside.

One row per family (2 layers, hidden 64, a small vocabulary): the family's own features are on and
strong enough to matter (a sliding window shorter than the examples, soft-caps that bend random
scores, q/k-norms, GQA, tied and untied heads, fused projections). The reference is transformers'
own eager forward and backward, one example at a time: no padding, no packing.
"""

import copy
import json
import shutil

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma3TextConfig,
    LlamaConfig,
    MistralConfig,
    Phi3Config,
    Qwen2Config,
    Qwen3Config,
)

from tunesmith.data.batching import make_batch
from tunesmith.data.tokenize import IGNORE_INDEX, TokenizedExample
from tunesmith.kernels import attention
from tunesmith.kernels.fused_lora import fuse_lora
from tunesmith.kernels.lean import LeanStorage
from tunesmith.train.fast_paths import fast_paths_used
from tunesmith.train.loss import labelled_loss
from tunesmith.train.recipe import train

VOCAB = 256
WINDOW = 4  # shorter than every example below
_COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
    # Larger than pretrained-like 0.02, so scores and logits reach the soft-caps.
    initializer_range=0.2,
)
_GEMMA = dict(head_dim=16, query_pre_attn_scalar=16, sliding_window=WINDOW, hidden_activation="gelu_pytorch_tanh")

FAMILIES = {
    "llama3": lambda: LlamaConfig(**_COMMON, rope_theta=500000.0, tie_word_embeddings=False),
    "qwen2": lambda: Qwen2Config(**_COMMON, tie_word_embeddings=True),
    "qwen3": lambda: Qwen3Config(**_COMMON, head_dim=16, tie_word_embeddings=True),
    "mistral": lambda: MistralConfig(**_COMMON, sliding_window=WINDOW, tie_word_embeddings=False),
    "gemma2": lambda: Gemma2Config(
        **_COMMON, **_GEMMA, attn_logit_softcapping=2.0, final_logit_softcapping=3.0, tie_word_embeddings=True
    ),
    "gemma3": lambda: Gemma3TextConfig(
        **_COMMON, **_GEMMA, layer_types=["sliding_attention", "full_attention"], tie_word_embeddings=True
    ),
    "phi3": lambda: Phi3Config(**_COMMON, tie_word_embeddings=False),
}

_MODELS: dict[str, torch.nn.Module] = {}


def _base(family: str):
    """The family's tiny model (random weights, fixed seed), built once; callers get a copy."""
    if family not in _MODELS:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(FAMILIES[family](), dtype=torch.float32)
        model.set_attn_implementation(attention.NAME)
        _MODELS[family] = model
    return copy.deepcopy(_MODELS[family])


def _model(family: str, method: str):
    model = _base(family)
    if method == "lora":
        torch.manual_seed(1)
        # Random B matrices, so A gets gradients too; no dropout, so every pass computes one function.
        lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear", init_lora_weights=False)
        model = get_peft_model(model, lora)
    else:
        model.requires_grad_(True)
    return model.train()


def _examples() -> list[TokenizedExample]:
    generator = torch.Generator().manual_seed(0)
    examples = []
    for length in (9, 14, 21):
        ids = torch.randint(3, VOCAB, (length,), generator=generator).tolist()
        prompt = length // 3
        examples.append(TokenizedExample(ids, [IGNORE_INDEX] * prompt + ids[prompt:], 0, length))
    return examples


def _grads(model) -> dict[str, torch.Tensor]:
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return grads


_REFERENCES: dict[tuple[str, str], tuple[float, dict[str, torch.Tensor]]] = {}


def _reference(family: str, method: str, examples) -> tuple[float, dict[str, torch.Tensor]]:
    """transformers' eager model(...).loss, one example at a time, weighted to a mean over label
    tokens; computed once per family and method."""
    if (family, method) not in _REFERENCES:
        _REFERENCES[family, method] = _eager_loss(_model(family, method), examples)
    return _REFERENCES[family, method]


def _eager_loss(model, examples) -> tuple[float, dict[str, torch.Tensor]]:
    model.set_attn_implementation("eager")
    counts = [sum(label != IGNORE_INDEX for label in e.labels[1:]) for e in examples]
    total = 0.0
    for example, count in zip(examples, counts, strict=True):
        ids, labels = torch.tensor([example.input_ids]), torch.tensor([example.labels])
        loss = model(input_ids=ids, labels=labels, use_cache=False).loss * count / sum(counts)
        loss.backward()
        total += loss.item()
    return total, _grads(model)


def _tunesmith(model, examples, fast: bool, packing: bool) -> tuple[float, dict[str, torch.Tensor]]:
    batch = make_batch(examples, 0, packing)
    parts = labelled_loss(model, batch, 5, fast)  # chunks of 5 label rows: several, the last partial
    loss = parts.loss_sum / parts.n_label_tokens
    loss.backward()
    return loss.item(), _grads(model)


def _close(actual: float | torch.Tensor, expected: float | torch.Tensor, what: str) -> None:
    actual, expected = torch.as_tensor(actual), torch.as_tensor(expected)
    error = ((actual - expected).norm() / expected.norm().clamp_min(1e-30)).item()
    assert error <= 1e-5, f"{what}: relative error {error:.2e}"


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(
    "method, fast, packing",
    [("full", True, True), ("full", True, False), ("full", False, False), ("lora", True, True), ("lora", False, False)],
)
def test_loss_and_gradients_match_transformers(family, method, fast, packing):
    examples = _examples()
    expected_loss, expected = _reference(family, method, examples)
    model = _model(family, method)
    if method == "lora" and fast:  # as the recipe sets them up (train/recipe.py)
        LeanStorage(model, torch.float32)
        fuse_lora(model)
    loss, grads = _tunesmith(model, examples, fast, packing)
    _close(loss, expected_loss, "loss")
    assert grads.keys() == expected.keys()
    for name in expected:
        _close(grads[name], expected[name], name)


_PRE_NORMS = {"input_layernorm", "post_attention_layernorm", "norm"}
# Gemma's post_attention_layernorm and post_feedforward_layernorm feed the residual, not a linear layer.
_GEMMA_NORMS = {"input_layernorm", "pre_feedforward_layernorm", "norm"}
LEAN_NORMS = {family: _PRE_NORMS for family in FAMILIES} | {"gemma2": _GEMMA_NORMS, "gemma3": _GEMMA_NORMS}


@pytest.mark.parametrize("family", FAMILIES)
def test_lean_storage_casts_only_the_norms_that_feed_linear_layers(family):
    """Casting a norm's output to the compute dtype is exact only where a linear layer (which autocast
    casts for) reads it; q/k-norms feed the rotary embedding, Gemma's post-norms the residual."""
    model = _model(family, "lora")
    LeanStorage(model, torch.bfloat16)
    touched = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if type(module).__name__.startswith("Lean") or (module._forward_hooks and "norm" in name)
    }
    assert touched == LEAN_NORMS[family]


_SWIGLU = "gated MLPs (silu) as one function each"
FAST_PATHS = {
    # family: (packed attention, label-only loss, fused LoRA)
    "llama3": ("on", "on", _SWIGLU),
    "qwen2": ("on", "on", _SWIGLU),
    "qwen3": ("on", "on", _SWIGLU),
    "mistral": ("on: per-example eager attention for the sliding window 4", "on", _SWIGLU),
    "gemma2": (
        "on: per-example eager attention for the sliding window 4 and soft-capped scores",
        "on: final soft-cap",
        "gated MLPs (gelu_tanh) as one function each",
    ),
    "gemma3": (
        "on: per-example eager attention for the sliding window 4",
        "on",
        "gated MLPs (gelu_tanh) as one function each",
    ),
    "phi3": ("on", "on", "layers one by one (no gate_proj/up_proj/down_proj MLP to fuse whole)"),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_fast_paths_used_says_what_each_path_does_for_the_family(family, tiny_config):
    cfg = tiny_config(data={"packing": True}, method={"dropout": 0.0})
    model = _model(family, "lora")
    lean = LeanStorage(model, torch.float32)
    fuse_lora(model)
    used = fast_paths_used(cfg, model, lean, False, torch.device("cpu"), "ddp", 1)
    attention_state, loss_state, fused_state = FAST_PATHS[family]
    assert used["packed_attention"] == attention_state
    assert used["label_only_loss"] == loss_state
    assert used["fused_lora"].startswith("on: ") and used["fused_lora"].endswith(fused_state)
    assert used["vocab_split"] == "off: not FSDP2 on several processes"
    off = fast_paths_used(tiny_config(train={"fast_paths": False}), model, None, False, torch.device("cpu"), "ddp", 1)
    assert {off[path] for path in ("packed_attention", "label_only_loss", "fused_lora", "lean_storage")} == {
        "off: train.fast_paths is false"
    }


@pytest.fixture(scope="module")
def family_folder(tmp_path_factory, smol_tokenizer):
    """family_folder(family): a model folder of the family (random weights, SmolLM2's tokenizer and
    vocabulary), as `model:` takes it."""
    folders = {}

    def make(family: str) -> str:
        if family not in folders:
            folder = tmp_path_factory.mktemp(family)
            ids = {
                "vocab_size": len(smol_tokenizer),
                "pad_token_id": smol_tokenizer.pad_token_id,
                "bos_token_id": smol_tokenizer.bos_token_id,
                "eos_token_id": smol_tokenizer.eos_token_id,
            }
            torch.manual_seed(0)
            config = FAMILIES[family]()
            for name, value in ids.items():
                setattr(config, name, value)
            AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(folder)
            smol_tokenizer.save_pretrained(folder)
            folders[family] = str(folder)
        return folders[family]

    return make


def _losses(out_dir) -> list[tuple[str, float]]:
    lines = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [(f"{key} at step {m['step']}", m[key]) for m in lines for key in ("train_loss", "val_loss") if key in m]


@pytest.fixture(scope="module")
def few_e2e(tmp_path_factory, small_e2e):
    """8 training and 4 validation lines of the shipped E2E data."""
    folder = tmp_path_factory.mktemp("few-e2e")
    lines = (small_e2e / "train.jsonl").read_text().splitlines()
    (folder / "train.jsonl").write_text("\n".join(lines[:8]) + "\n")
    (folder / "validation.jsonl").write_text("\n".join(lines[8:12]) + "\n")
    return folder


# A whole run is seconds even on these models (SmolLM2's 49k vocabulary), so two rows: between them
# a sliding window, soft-caps, GeGLU, a tied and scaled embedding (Gemma 2, LoRA), fused qkv and
# gate_up projections and an untied head (Phi-3, full); the forward/backward rows above cover all.
@pytest.mark.parametrize("family, method", [("gemma2", "lora"), ("phi3", "full")])
def test_three_steps_take_the_same_losses_with_fast_paths_on_and_off(
    family, method, family_folder, few_e2e, tiny_config, tmp_path
):
    """The whole recipe, 3 steps: packed batches and every kernel against padded batches and
    transformers' own modules; summary.json says which fast paths ran."""
    runs = {}
    for fast in (True, False):
        out = tmp_path / f"fast-{fast}"
        cfg = tiny_config(
            out,
            model=family_folder(family),
            data={"train": str(few_e2e / "train.jsonl"), "validation": str(few_e2e / "validation.jsonl")},
            method={"name": method, "dropout": 0.0},
            train={"max_steps": 3, "batch_size": 2, "eval_every": 3, "log_every": 1, "save_every": 100}
            | {"fast_paths": fast},
            eval={"samples": 0, "max_new_tokens": 1},
        )
        train(cfg)
        runs[fast] = _losses(out)
    names = ["val_loss at step 0", *(f"train_loss at step {step}" for step in (1, 2, 3)), "val_loss at step 3"]
    assert [name for name, _ in runs[True]] == [name for name, _ in runs[False]] == names
    for (name, on), (_, off) in zip(runs[True], runs[False], strict=True):
        assert on == pytest.approx(off, rel=1e-5), name
    summary = json.loads((tmp_path / "fast-True" / "summary.json").read_text())
    assert summary["fast_paths_used"]["packed_attention"].startswith("on")
    assert (
        json.loads((tmp_path / "fast-False" / "summary.json").read_text())["fast_paths_used"]["label_only_loss"]
        == "off: train.fast_paths is false"
    )


def test_a_resumed_run_ends_where_the_straight_one_does(family_folder, few_e2e, tiny_config, tmp_path):
    """Gemma 2 with LoRA (every kernel, its own attention and loss): 4 steps straight, and the same
    run resumed from its step-2 checkpoint with everything written after it removed."""
    cfg = tiny_config(
        tmp_path / "straight",
        model=family_folder("gemma2"),
        data={"train": str(few_e2e / "train.jsonl"), "validation": str(few_e2e / "validation.jsonl")},
        method={"dropout": 0.0},
        train={"max_steps": 4, "batch_size": 2, "eval_every": 4, "log_every": 1, "save_every": 2},
        eval={"samples": 0, "max_new_tokens": 1},
    )
    train(cfg)
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "straight", resumed)
    for written_later in ("adapter", "merged", "checkpoints/best", "summary.json"):
        path = resumed / written_later
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    assert [p.name for p in (resumed / "checkpoints").iterdir()] == ["step-000002"]
    train(cfg.model_copy(update={"out_dir": str(resumed)}), resume=True)
    straight = load_file(tmp_path / "straight/adapter/adapter_model.safetensors")
    again = load_file(resumed / "adapter/adapter_model.safetensors")
    assert straight.keys() == again.keys()
    assert all(torch.equal(straight[k], again[k]) for k in straight)
    assert _losses(tmp_path / "straight") == _losses(resumed)
