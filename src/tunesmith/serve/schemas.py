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


class FunctionCall(BaseModel):
    model_config = ConfigDict(strict=True)
    name: str
    arguments: str = Field(description="The arguments as a JSON string.")


class ToolCallItem(BaseModel):
    model_config = ConfigDict(strict=True)
    id: str
    type: Literal["function"]
    function: FunctionCall


class ChatMessage(BaseModel):
    model_config = ConfigDict(strict=True)
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    tool_calls: list[ToolCallItem] | None = None
    tool_call_id: str | None = None
    name: str | None = None

    def as_dict(self) -> dict:
        """The message as a training line writes it (data.formats.read_chat checks it)."""
        out = {"role": "system" if self.role == "developer" else self.role}
        if self.content is not None or not self.tool_calls:
            out["content"] = (
                self.content if isinstance(self.content, str | None) else "".join(p.text for p in self.content)
            )
        if self.tool_calls:
            out["tool_calls"] = [call.model_dump() for call in self.tool_calls]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        if self.name is not None and self.role == "tool":
            out["name"] = self.name
        return out


class FunctionSpec(BaseModel):
    model_config = ConfigDict(strict=True)
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = Field(None, description="A JSON Schema of the arguments.")
    strict: bool | None = None


class ToolSpec(BaseModel):
    model_config = ConfigDict(strict=True)
    type: Literal["function"]
    function: FunctionSpec


class NamedFunction(BaseModel):
    model_config = ConfigDict(strict=True)
    name: str


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(strict=True)
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaSpec(BaseModel):
    model_config = ConfigDict(strict=True, populate_by_name=True)
    name: str
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class TextFormat(BaseModel):
    model_config = ConfigDict(strict=True)
    type: Literal["text"]


class JsonObjectFormat(BaseModel):
    model_config = ConfigDict(strict=True)
    type: Literal["json_object"]


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(strict=True)
    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


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
    tools: list[ToolSpec] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: Annotated[TextFormat | JsonObjectFormat | JsonSchemaFormat, Field(discriminator="type")] | None = (
        None
    )

    def chat_dict(self) -> dict:
        """The conversation as a training line writes it: messages, tools, parallel_tool_calls."""
        out: dict = {"messages": [message.as_dict() for message in self.messages]}
        if self.tools is not None:
            out["tools"] = [tool.model_dump(exclude_none=True) for tool in self.tools]
        if self.parallel_tool_calls is not None:
            out["parallel_tool_calls"] = self.parallel_tool_calls
        return out


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
