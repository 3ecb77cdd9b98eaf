"""Hugging Face Hub model ids (`Qwen/Qwen3-0.6B`): the local Hugging Face cache first, the network only on a miss.

Many training machines have no network: a model placed in the cache (or a folder passed by path) must
load without a request, and a missing one must say how to place it rather than hang or time out.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from tunesmith.errors import TunesmithError

# owner/name as the Hub spells them; anything with more slashes or a leading dot is a path.
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
# What transformers needs to load a model and its tokenizer; not the .bin/.pth/.gguf duplicates
# many repos also ship, which would multiply the download.
MODEL_FILES = ["*.json", "*.safetensors", "*.jinja", "*.model", "*.txt", "*.tiktoken"]
_TRUE = {"1", "ON", "YES", "TRUE"}


def is_hub_id(name: str) -> bool:
    return HUB_ID.fullmatch(name) is not None


def hub_cache() -> Path:
    """The cache huggingface_hub uses, read from the environment now (its constants are fixed at import)."""
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path(constants.HF_HUB_CACHE)


def _offline() -> bool:
    return any(os.environ.get(name, "").upper() in _TRUE for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def resolve_hub_model(repo_id: str) -> Path:
    """The snapshot folder of `repo_id` in the local cache, downloaded into it first when missing and allowed."""
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    cache = hub_cache()
    try:
        return Path(huggingface_hub.snapshot_download(repo_id, cache_dir=cache, local_files_only=True))
    except LocalEntryNotFoundError:
        pass
    if _offline():
        raise TunesmithError(
            f"model {repo_id!r} is not a local folder and not in the Hugging Face cache {cache}, and downloads "
            f"are off (HF_HUB_OFFLINE): on a connected machine run `hf download {repo_id}` and copy its "
            f"models--{repo_id.replace('/', '--')} folder into {cache}, or copy the model folder here and pass its path"
        )
    try:
        return Path(huggingface_hub.snapshot_download(repo_id, cache_dir=cache, allow_patterns=MODEL_FILES))
    except OSError as error:  # huggingface_hub's: not found, gated, HTTP errors, no connection
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise TunesmithError(
            f"could not download {repo_id!r} from the Hugging Face Hub ({reason}); check the id and the network, "
            f"or copy the model folder here and pass its path"
        ) from error
