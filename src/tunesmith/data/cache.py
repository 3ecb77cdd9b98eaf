"""Tokenise once: prepared datasets cached under $TUNESMITH_HOME/cache/data, keyed by content.

The key covers the bytes of the data files, every data setting, the tokenizer (vocabulary, merges,
chat template) and the batch settings the report depends on, so an edit to any of them misses the
cache instead of serving stale tokens. A slow tokenizer has no serialised form to hash: no cache.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Callable
from pathlib import Path

from tunesmith.config import DataConfig
from tunesmith.paths import atomic_file, tunesmith_home

CACHE_VERSION = 1


def cache_key(cfg: DataConfig, tokenizer, extra: tuple) -> str | None:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    digest = hashlib.sha256()
    for path in (cfg.train, cfg.validation):
        try:
            digest.update(Path(path).read_bytes() if path else b"")
        except OSError:
            return None  # missing or unreadable: the uncached read reports it properly
    digest.update(cfg.model_dump_json().encode())
    digest.update(backend.to_str().encode())
    digest.update(repr((tokenizer.chat_template, tokenizer.eos_token, extra, CACHE_VERSION)).encode())
    return digest.hexdigest()


def load_or_build(key: str | None, build: Callable):
    if key is None:
        return build()
    path = tunesmith_home() / "cache" / "data" / f"{key}.pkl"
    if path.is_file():
        try:
            return pickle.loads(path.read_bytes())
        except (pickle.UnpicklingError, EOFError, AttributeError):
            path.unlink(missing_ok=True)  # written by another version: rebuild
    value = build()
    with atomic_file(path) as fh:
        pickle.dump(value, fh, protocol=pickle.HIGHEST_PROTOCOL)
    return value
