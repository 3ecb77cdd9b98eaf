"""Embeddings of many texts, computed once: cached under `$TUNESMITH_HOME/embeddings`, keyed by the
model's weights, its pooling and the texts, so a corpus is embedded once however many evaluations
(retrieval, classification probes, retrieval-augmented prompts) read it."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from tunesmith.encoders.model import Encoder
from tunesmith.paths import atomic_file, tunesmith_home


def _cache_key(encoder: Encoder, texts: list[str]) -> str:
    digest = hashlib.sha256()
    for weights in sorted(Path(encoder.path).glob("*.safetensors")):
        stat = weights.stat()
        digest.update(f"{weights.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    digest.update(repr(encoder.pooling).encode())
    for text in texts:
        digest.update(hashlib.sha256(text.encode()).digest())
    return digest.hexdigest()[:32]


def embed_cached(encoder: Encoder, texts: list[str], what: str, batch_size: int) -> np.ndarray:
    """`encoder.encode(texts)`, read from / written to the embedding cache."""
    path = tunesmith_home() / "embeddings" / f"{_cache_key(encoder, texts)}.npy"
    if path.is_file():
        return np.load(path)
    out = encoder.encode(texts, batch_size, progress=f"embedding {len(texts)} {what}")
    with atomic_file(path) as fh:
        np.save(fh, out)
    return out
