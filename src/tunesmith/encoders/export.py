"""An encoder's export: one folder that is both a Hugging Face `AutoModel` folder and a
sentence-transformers folder (`SentenceTransformer(path)` loads it with the same pooling and
normalisation as `Encoder.embed`, so both give the same embeddings).

sentence-transformers reads ``modules.json`` (Transformer, Pooling, [Normalize]),
``1_Pooling/config.json`` and ``sentence_bert_config.json`` beside the HF files; all-MiniLM-L6-v2
itself is laid out this way.
"""

from __future__ import annotations

import json
from pathlib import Path

from tunesmith.encoders.model import POOLING_MODES, Encoder
from tunesmith.paths import write_dir_atomic


def _sentence_transformers_files(encoder: Encoder, folder: Path) -> None:
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if encoder.pooling.normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (folder / "2_Normalize").mkdir()
    (folder / "modules.json").write_text(json.dumps(modules, indent=2))
    (folder / "1_Pooling").mkdir()
    pooling = {"word_embedding_dimension": encoder.model.config.hidden_size}
    for mode in POOLING_MODES:
        key = "pooling_mode_cls_token" if mode == "cls" else f"pooling_mode_{mode}_tokens"
        pooling[key] = mode == encoder.pooling.mode
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2))
    config = {"max_seq_length": encoder.pooling.max_seq_len, "do_lower_case": False}
    (folder / "sentence_bert_config.json").write_text(json.dumps(config, indent=2))


def save_encoder(encoder: Encoder, target: Path) -> Path:
    """Write the encoder (weights, tokenizer, pooling) to `target` atomically."""

    def fill(folder: Path) -> None:
        encoder.model.save_pretrained(folder)
        encoder.tokenizer.save_pretrained(folder)
        _sentence_transformers_files(encoder, folder)

    return write_dir_atomic(target, fill)
