"""Request bodies of the inference routes as pydantic models: validation, and the OpenAPI schema
that documents them (and that the fuzz test generates requests from).

Strict: a number must be a JSON number and a string a JSON string, as OpenAI's API requires.
Parameters OpenAI defines that tunesmith does not use (``user``, ``logit_bias``, ...) are accepted
and ignored, so the official clients work unchanged.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

# Within what torch.Generator.manual_seed accepts; powers of two, so a client comparing JSON numbers
# as floats (JSON Schema validators often do) draws the same line.
SEED_RANGE = (-(2**63), 2**63)
StopText = Annotated[str, Field(min_length=1)]


def _integral(value):
    """7630.0 is the integer 7630 in JSON (and in JSON Schema): strict about type, not spelling."""
    return int(value) if isinstance(value, float) and value.is_integer() and abs(value) < 2**64 else value


def integer(low: int, high: int):
    """An integer in [low, high], written as a JSON integer or an integral number."""
    return Annotated[int, Field(ge=low, le=high), BeforeValidator(_integral)]


class TextPart(BaseModel):
    model_config = ConfigDict(strict=True)
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(strict=True)
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def as_dict(self) -> dict:
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class _Generation(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")
    model: Annotated[str, Field(min_length=1)]
    max_tokens: integer(1, 1_000_000) | None = None
    max_completion_tokens: integer(1, 1_000_000) | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    n: Literal[1] | None = Field(None, description="Only one choice per request.")
    stop: (
        Annotated[str, Field(min_length=1)]
        | Annotated[list[Annotated[str, Field(min_length=1)]], Field(max_length=4)]
        | None
    ) = None
    seed: integer(*SEED_RANGE) | None = None
    stream: bool | None = None
    stream_options: dict[str, Any] | None = None

    def sampling(self, default_max_tokens: int):
        from tunesmith.generation import Sampling

        top_p = 1.0 if self.top_p is None else self.top_p
        temperature = 1.0 if self.temperature is None else self.temperature
        return Sampling(
            max_new_tokens=self.max_completion_tokens or self.max_tokens or default_max_tokens,
            temperature=0.0 if top_p == 0 else temperature,
            top_p=top_p,
            seed=self.seed,
            stop=[self.stop] if isinstance(self.stop, str) else list(self.stop or []),
        )

    @property
    def include_usage(self) -> bool:
        return (self.stream_options or {}).get("include_usage") is True


class ChatRequest(_Generation):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]


class CompletionRequest(_Generation):
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)] = Field(description="One prompt per request.")

    @property
    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """Every error the service answers, as OpenAI's API does (serve/errors.py writes it)."""

    error: ErrorDetail


class FileUpload(BaseModel):
    """``POST /v1/files``: the multipart/form-data fields (serve/uploads.py reads them as they arrive)."""

    file: bytes = Field(description="The JSONL file: one JSON object per line.")
    purpose: Literal["fine-tune"]


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")
    model: Annotated[str, Field(min_length=1)]
    input: (
        Annotated[str, Field(min_length=1)]
        | Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1, max_length=2048)]
    )
    encoding_format: Literal["float", "base64"] | None = None
