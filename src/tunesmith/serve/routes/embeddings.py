"""`POST /v1/embeddings` in OpenAI's shape: `input` (a string or a list of strings), `model`,
`encoding_format` (`float`, or `base64` little-endian float32, which the official SDK asks for),
and `usage` counting the tokens each input was encoded with (special tokens included).

`model` is a built-in encoder or one of the organisation's fine-tuned encoders (the run's exported
`merged/` folder). Built-in encoders load once and stay loaded, fine-tuned ones are the
``--max-adapters`` most recently used; embeddings are the same as `Encoder.encode` (and as the
exported sentence-transformers folder).
"""

from __future__ import annotations

import base64
import logging
import threading
from collections import OrderedDict

from fastapi import FastAPI, Request

from tunesmith.serve.errors import APIError
from tunesmith.serve.names import is_encoder
from tunesmith.serve.openapi import json_request
from tunesmith.serve.routes.params import Org, json_body
from tunesmith.serve.schemas import EmbeddingRequest
from tunesmith.serve.store import Store

log = logging.getLogger("tunesmith.serve")

MAX_INPUTS = 2048


class EncoderPool:
    """Loaded encoders by model name: every built-in one, and the ``fine_tuned`` most recently used
    fine-tunes (each is a whole model, not an adapter). A lock so two first requests do not load
    one twice."""

    def __init__(self, fine_tuned: int):
        self.fine_tuned = max(1, fine_tuned)
        self._loaded: OrderedDict = OrderedDict()  # least recently used first
        self._lock = threading.Lock()

    def get(self, name: str, source: str):
        """The encoder called ``name``, loaded from ``source`` (a built-in name or a folder) if need be."""
        from tunesmith.encoders.model import load_encoder
        from tunesmith.models import ENCODER_MODELS

        with self._lock:
            encoder = self._loaded.pop(name, None) or load_encoder(source)
            self._loaded[name] = encoder
            fine_tunes = [n for n in self._loaded if n not in ENCODER_MODELS]
            for old in fine_tunes[: -self.fine_tuned]:
                del self._loaded[old]
            return encoder


def _inputs(raw) -> list[str]:
    texts = [raw] if isinstance(raw, str) else raw
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise APIError(400, "input must be a non-empty string or a non-empty list of strings", param="input")
    if len(texts) > MAX_INPUTS:
        raise APIError(400, f"input may hold at most {MAX_INPUTS} strings, got {len(texts)}", param="input")
    for i, text in enumerate(texts):
        if not text:
            raise APIError(400, f"input[{i}] is an empty string", param="input")
    return texts


def add_routes(app: FastAPI) -> None:
    from tunesmith.models import ENCODER_MODELS

    store: Store = app.state.store
    pool = EncoderPool(app.state.settings.max_adapters)
    executor = app.state.executors["embeddings"]

    def resolve(org: dict, name: str) -> str:
        """What the encoder ``name`` loads from; a decoder, or another organisation's fine-tune, is
        no embedding model of the caller's."""
        if name in ENCODER_MODELS:
            return name
        row = store.model(org["id"], name) if is_encoder(name) else None
        if row is None:
            raise APIError(
                404,
                f"The model {name!r} does not exist or is not an embedding model ({', '.join(ENCODER_MODELS)} "
                "or a fine-tune of one)",
                param="model",
                code="model_not_found",
            )
        return row["adapter_path"]  # an encoder job registers its exported folder, merged/

    @app.post("/v1/embeddings", openapi_extra=json_request(EmbeddingRequest))  # _inputs checks the same
    async def embeddings(request: Request, org: Org):
        body = await json_body(request)
        texts = _inputs(body.get("input"))
        name = body.get("model")
        if not isinstance(name, str) or not name:
            raise APIError(400, "missing required parameter 'model'", param="model")
        source = resolve(org, name)
        encoding = body.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            raise APIError(400, f"encoding_format must be float or base64, got {encoding!r}", param="encoding_format")

        def run():
            try:
                encoder = pool.get(name, source)
            except Exception as error:
                log.exception("loading %s", name)
                raise APIError(500, f"could not load the model: {error}", code="model_load_failed") from None
            vectors = encoder.encode(texts)
            tokens = int(encoder.tokenize(texts)["attention_mask"].sum())
            return vectors, tokens

        vectors, tokens = await executor.run(org["id"], run)
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": base64.b64encode(v.astype("<f4").tobytes()).decode()
                if encoding == "base64"
                else v.tolist(),
            }
            for i, v in enumerate(vectors)
        ]
        return {
            "object": "list",
            "data": data,
            "model": name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
