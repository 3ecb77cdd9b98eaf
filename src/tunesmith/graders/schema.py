"""OpenAI's grader objects (``string_check``, ``text_similarity``, ``python``, ``score_model``,
``multi``) as pydantic models, checked whole when parsed: templates, the python source, the
formula and its names. A grader that parses can run; what it refuses is one GraderError naming the
field (``graders.accuracy.operation: ...``).
"""

from __future__ import annotations

import ast
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, ValidationInfo, field_validator

from tunesmith.errors import TunesmithError
from tunesmith.graders import formula
from tunesmith.graders.templates import references

MAX_SOURCE_BYTES = 256 * 1024  # OpenAI's limit on a python grader's source


class GraderError(TunesmithError):
    """A grader that cannot run; ``param`` is the dotted field it is about (None: the whole grader)."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


class _Grader(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    pass_threshold: float | None = None  # a reward at or above it passes


class _Comparison(_Grader):
    """A grader of ``input`` against ``reference``, both templates."""

    input: str
    reference: str

    @field_validator("input", "reference")
    @classmethod
    def _check(cls, text: str) -> str:
        references(text)  # TemplateError (a ValueError for pydantic) names the reference
        return text


class StringCheck(_Comparison):
    type: Literal["string_check"]
    operation: Literal["eq", "ne", "like", "ilike"]


Metric = Literal[
    "cosine", "fuzzy_match", "bleu", "gleu", "meteor", "rouge_1", "rouge_2", "rouge_3", "rouge_4", "rouge_5", "rouge_l"
]


class TextSimilarity(_Comparison):
    type: Literal["text_similarity"]
    evaluation_metric: Metric


class Python(_Grader):
    type: Literal["python"]
    source: str
    image_tag: str | None = None  # OpenAI's runtime image; there is one runtime here, this Python's

    @field_validator("source")
    @classmethod
    def _defines_grade(cls, source: str) -> str:
        if len(source.encode()) > MAX_SOURCE_BYTES:
            raise ValueError(f"the source has {len(source.encode())} bytes, more than {MAX_SOURCE_BYTES}")
        try:
            tree = ast.parse(source)
        except SyntaxError as error:
            raise ValueError(f"the source does not parse: line {error.lineno}: {error.msg}") from None
        defined = any(isinstance(n, ast.FunctionDef) and n.name == "grade" for n in tree.body)
        if not defined:
            raise ValueError("the source must define a top-level function grade(sample, item) -> float")
        return source


class Content(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["user", "assistant", "system", "developer"]
    content: str | Content | list[Content]
    type: Literal["message"] | None = None

    @field_validator("content")
    @classmethod
    def _text_only(cls, content):
        for part in content if isinstance(content, list) else [content]:
            if isinstance(part, Content) and (part.type not in ("input_text", "output_text") or part.text is None):
                raise ValueError(f"content of type {part.type!r} is not supported: only text (input_text, output_text)")
            references(part if isinstance(part, str) else part.text)
        return content

    def text(self) -> str:
        parts = self.content if isinstance(self.content, list) else [self.content]
        return "".join(p if isinstance(p, str) else p.text for p in parts)


class SamplingParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_completions_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = None
    reasoning_effort: str | None = None

    @field_validator("reasoning_effort")
    @classmethod
    def _no_reasoning(cls, effort):
        if effort is not None:
            raise ValueError("reasoning_effort is not supported: no reasoning models here")
        return effort


class ScoreModel(_Grader):
    type: Literal["score_model"]
    model: str  # any tunesmith model: a built-in name, a Hugging Face folder, a run folder
    input: list[Message] = Field(min_length=1)
    range: tuple[float, float] = (0.0, 1.0)
    sampling_params: SamplingParams | None = None

    @field_validator("range")
    @classmethod
    def _ordered(cls, bounds):
        if not bounds[0] < bounds[1]:
            raise ValueError(f"range must be [low, high] with low < high, got {list(bounds)}")
        return bounds


Leaf = Annotated[StringCheck | TextSimilarity | Python | ScoreModel, Field(discriminator="type")]


class Multi(_Grader):
    type: Literal["multi"]
    graders: dict[str, Leaf]
    calculate_output: str

    @field_validator("graders", mode="before")
    @classmethod
    def _one_or_many(cls, graders):
        # OpenAI's SDK types `graders` as one grader; its guide as an object of named graders.
        if isinstance(graders, dict) and isinstance(graders.get("type"), str):
            return {graders.get("name"): graders}
        return graders

    @field_validator("graders")
    @classmethod
    def _named(cls, graders: dict) -> dict:
        if not graders:
            raise ValueError("graders must name at least one grader")
        for key in graders:
            if not key.isidentifier():
                raise ValueError(f"grader name {key!r} cannot appear in calculate_output: use letters, digits and _")
        return graders

    @field_validator("calculate_output")
    @classmethod
    def _formula(cls, text: str, info: ValidationInfo) -> str:
        formula.check(text, set(info.data.get("graders") or ()))
        return text


Grader = Annotated[StringCheck | TextSimilarity | Python | ScoreModel | Multi, Field(discriminator="type")]
TYPES = ("string_check", "text_similarity", "python", "score_model", "multi")
_ADAPTER = TypeAdapter(Grader)


def parse_grader(raw) -> Grader:
    """``raw`` (OpenAI's JSON grader object) as a Grader, or one GraderError naming every problem."""
    if not isinstance(raw, dict):
        raise GraderError(f"a grader is a JSON object, got {type(raw).__name__}")
    kind = raw.get("type")
    if kind not in TYPES:
        supported = ", ".join(TYPES)
        if kind == "label_model":
            raise GraderError(f"grader type 'label_model' is not supported (supported: {supported})", "type")
        raise GraderError(f"unknown grader type {kind!r} (supported: {supported})", "type")
    try:
        return _ADAPTER.validate_python(raw)
    except ValidationError as error:
        problems, first = [], None
        for item in error.errors():
            loc = [str(p) for p in item["loc"] if p not in TYPES]
            where = ".".join(loc)
            first = first or where or None
            reason = item["msg"].removeprefix("Value error, ")
            if item["type"] == "missing":
                reason = "missing required field"
            elif item["type"] == "extra_forbidden":
                reason = "unknown field"
            problems.append(f"{where}: {reason}" if where else reason)
        raise GraderError("; ".join(dict.fromkeys(problems)), first) from None
