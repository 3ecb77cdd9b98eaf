"""`POST /v1/embeddings` in OpenAI's shape: `input` (a string or a list of strings), `model`,
`encoding_format` (`float`, or `base64` little-endian float32, which the official SDK asks for),
and `usage` counting the tokens each input was encoded with (special tokens included).

Encoders load once and stay loaded; embeddings are the same as `Encoder.encode` (and as the
exported sentence-transformers folder).
"""

from __future__ import annotations

import base64
import threading

from fastapi import FastAPI, Request
from starlette.concurrency import run_in_threadpool

from tunesmith.serve.errors import APIError
from tunesmith.serve.routes.params import Org, json_body

MAX_INPUTS = 2048


class EncoderPool:
    """Loaded encoders by model name; a lock so two first requests do not load one twice."""

    def __init__(self):
        self._loaded: dict = {}
        self._lock = threading.Lock()

    def get(self, name: str):
        from tunesmith.encoders.model import load_encoder

        with self._lock:
            if name not in self._loaded:
                self._loaded[name] = load_encoder(name)
            return self._loaded[name]


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

    pool = EncoderPool()

    @app.post("/v1/embeddings")
    async def embeddings(request: Request, org: Org):
        body = await json_body(request)
        texts = _inputs(body.get("input"))
        name = body.get("model")
        if not isinstance(name, str) or not name:
            raise APIError(400, "missing required parameter 'model'", param="model")
        if name not in ENCODER_MODELS:
            raise APIError(
                404,
                f"The model {name!r} does not exist or is not an embedding model ({', '.join(ENCODER_MODELS)})",
                param="model",
                code="model_not_found",
            )
        encoding = body.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            raise APIError(400, f"encoding_format must be float or base64, got {encoding!r}", param="encoding_format")

        def run():
            encoder = pool.get(name)
            vectors = encoder.encode(texts)
            tokens = int(encoder.tokenize(texts)["attention_mask"].sum())
            return vectors, tokens

        vectors, tokens = await run_in_threadpool(run)
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
