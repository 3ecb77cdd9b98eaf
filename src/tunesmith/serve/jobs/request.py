"""The body of ``POST /v1/fine_tuning/jobs`` as pydantic models: what a client may ask a job to do.

Strict, as OpenAI's API is: a number must be a JSON number and a string a JSON string; unknown
parameters and hyperparameters are refused. Whether the model and files are the organisation's to
use is the route's check (routes/jobs.py): it needs the store.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from tunesmith.serve.errors import rule
from tunesmith.serve.names import is_encoder
from tunesmith.serve.schemas import integer


def _setting(kind: type, low: float, high: float):
    """A hyperparameter: "auto" (null too: the service picks, jobs/policy.py), or a number in
    range; an integer may be written 2.0."""
    if kind is int:
        bounds, allowed = Field(ge=low, le=high), f"between {low} and {high}"
    else:
        bounds, allowed = Field(gt=low, le=high), f"> {low} and <= {high}"

    def check(value):
        if value is None or value == "auto":
            return "auto"
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if kind is int and number and (isinstance(value, int) or value.is_integer()):
            value = int(value)
        elif kind is int or not number:
            expected = "an integer" if kind is int else "a number"
            raise rule(f"{{where}} must be 'auto' or {expected}, got {{got}}", got=json.dumps(value)[:100])
        if not (low < value <= high if kind is float else low <= value <= high):
            raise rule(f"{{where}} must be {allowed}, got {{got}}", got=str(value))
        return value

    accepted = Literal["auto"] | Annotated[kind, bounds] | None
    return Annotated[Any, PlainValidator(check, json_schema_input_type=accepted)]


Epochs = _setting(int, 1, 50)
BatchSize = _setting(int, 1, 256)
LearningRateMultiplier = _setting(float, 0, 10)
Beta = _setting(float, 0, 2)
ComputeMultiplier = _setting(float, 0, 10)
EvalInterval = _setting(int, 1, 100_000)
EvalSamples = _setting(int, 1, 32)
REASONING_EFFORTS = ("default", "low", "medium", "high")  # OpenAI's; only "default" means something here


def _reasoning_effort(value):
    """OpenAI's reasoning models think before answering; the models here answer directly."""
    if value is None or value == "default":
        return "default"
    if value in REASONING_EFFORTS:
        raise rule(
            "{where} {got} is not supported: no reasoning models here (leave it out or give 'default')",
            got=repr(value),
        )
    expected = ", ".join(repr(e) for e in REASONING_EFFORTS)
    raise rule("{where} must be one of {expected}, got {got}", expected=expected, got=json.dumps(value)[:100])


ReasoningEffort = Annotated[
    Any, PlainValidator(_reasoning_effort, json_schema_input_type=Literal[REASONING_EFFORTS] | None)
]


class Hyperparameters(BaseModel):
    """Supervised fine-tuning's hyperparameters (and the ones every method takes)."""

    model_config = ConfigDict(extra="forbid")
    n_epochs: Epochs = "auto"
    batch_size: BatchSize = "auto"
    learning_rate_multiplier: LearningRateMultiplier = "auto"

    @model_validator(mode="before")
    @classmethod
    def _known(cls, data):
        for key in data if isinstance(data, dict) else ():
            if key not in cls.model_fields:
                expected = ", ".join(cls.model_fields)
                raise rule("unknown hyperparameter {where} (expected one of {expected})", key=key, expected=expected)
        return data

    def given(self) -> dict:
        """The hyperparameters the request named ("auto" for those it left to the service)."""
        return self.model_dump(exclude_unset=True)


class DpoHyperparameters(Hyperparameters):
    beta: Beta = "auto"


class ReinforcementHyperparameters(Hyperparameters):
    """How they map onto the GRPO trainer: jobs/policy.py and supervisor.py (docs/service.md)."""

    compute_multiplier: ComputeMultiplier = "auto"
    eval_interval: EvalInterval = "auto"
    eval_samples: EvalSamples = "auto"
    reasoning_effort: ReasoningEffort = "default"


# OpenAI's fine-tuning methods and the hyperparameters each takes.
METHODS = {"supervised": Hyperparameters, "dpo": DpoHyperparameters, "reinforcement": ReinforcementHyperparameters}


class SupervisedSection(BaseModel):
    hyperparameters: Hyperparameters | None = None


class DpoSection(BaseModel):
    hyperparameters: DpoHyperparameters | None = None


class ReinforcementSection(BaseModel):
    # An OpenAI grader object; routes/jobs.py checks it whole with the graders' own parser, as
    # /v1/fine_tuning/alpha/graders/validate does, so a grader that cannot run is this request's 400.
    grader: dict[str, Any]
    hyperparameters: ReinforcementHyperparameters | None = None


def _unknown_method(value, **key) -> PydanticCustomError:
    expected = " or ".join(repr(name) for name in METHODS)
    return rule("{where} must be {expected} (got {got})", expected=expected, got=json.dumps(value)[:100], **key)


def _method_type(value):
    if not (isinstance(value, str) and value in METHODS):
        raise _unknown_method(value)
    return value


class Method(BaseModel):
    """``{"type": "dpo", "dpo": {"hyperparameters": {...}}}``; other keys are ignored, as OpenAI's
    sections for other methods are."""

    type: Annotated[str, PlainValidator(_method_type, json_schema_input_type=Literal[tuple(METHODS)])]
    supervised: SupervisedSection | None = None
    dpo: DpoSection | None = None
    reinforcement: ReinforcementSection | None = None

    @model_validator(mode="before")
    @classmethod
    def _chosen_section_only(cls, data):
        if not isinstance(data, dict):  # "method": "dpo" names no method.type
            raise _unknown_method(data, key="type")
        return {key: value for key, value in data.items() if key in ("type", data.get("type"))}

    @model_validator(mode="after")
    def _graded(self):
        if self.type == "reinforcement" and self.reinforcement is None:
            raise rule(
                "{where} is required with method type 'reinforcement' (the OpenAI grader that scores answers)",
                key="reinforcement.grader",
            )
        return self

    def hyperparameters(self) -> dict:
        section = getattr(self, self.type)
        return section.hyperparameters.given() if section and section.hyperparameters else {}


def _present(value):
    """An empty model or file id is as good as none: the same 'missing' answer."""
    if value is None or value == "":
        raise PydanticCustomError("missing", "Field required")
    return value


def _metadata(value):
    if (
        not isinstance(value, dict)
        or len(value) > 16
        or not all(
            isinstance(k, str) and len(k) <= 64 and isinstance(v, str) and len(v) <= 512 for k, v in value.items()
        )
    ):
        raise rule("{where} must be at most 16 string keys (<= 64 chars) with string values (<= 512 chars)")
    return value


class WandbIntegration(BaseModel):
    """OpenAI's ``wandb`` integration: the run's metrics go to Weights & Biases (``WANDB_MODE=offline``
    in the server's environment writes the run under the job's folder instead of sending it)."""

    model_config = ConfigDict(strict=True, extra="forbid")
    project: Annotated[str, Field(min_length=1, max_length=128)]
    name: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    entity: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    tags: Annotated[list[Annotated[str, Field(min_length=1, max_length=64)]], Field(max_length=20)] | None = None


class Integration(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    type: Literal["wandb"]
    wandb: WandbIntegration


MetadataShape = Annotated[
    dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]], Field(max_length=16)
]


class JobRequest(BaseModel):
    """The request as a whole."""

    model_config = ConfigDict(strict=True, extra="forbid")
    model: Annotated[str, Field(min_length=1), BeforeValidator(_present)]
    training_file: Annotated[str, Field(min_length=1), BeforeValidator(_present)]
    validation_file: str | None = None
    # pydantic's regex is Rust's: "$" is the end of the text, so "abc\n" is refused.
    suffix: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")] | None = None
    seed: integer(0, 2**31 - 1) | None = None
    metadata: Annotated[dict[str, str], PlainValidator(_metadata, json_schema_input_type=MetadataShape)] | None = None
    integrations: Annotated[list[Integration], Field(max_length=1)] | None = None
    method: Method | None = None
    hyperparameters: Hyperparameters | None = None  # after method: _one_place reads it

    @field_validator("integrations")
    @classmethod
    def _tracker_installed(cls, integrations: list[Integration] | None):
        import importlib.util

        if integrations and importlib.util.find_spec("wandb") is None:
            raise rule("{where}: wandb is not installed on this server (pip install 'tunesmith[wandb]')")
        return integrations

    @field_validator("method")
    @classmethod
    def _fits_model(cls, method: Method | None, info: ValidationInfo):
        """An encoder's only method is supervised (contrastive, on query/positive pairs): DPO and
        reinforcement tune a decoder's answers and have no meaning for an embedding model."""
        model = info.data.get("model")
        tunes = {"dpo": "on preference pairs", "reinforcement": "on its sampled answers, scored by a grader"}
        if method and method.type in tunes and model and is_encoder(model):
            raise rule(
                "{where} {method} tunes a decoder {how}; {model} is an embedding model, "
                "fine-tuned on query/positive pairs with method type 'supervised'",
                key="type",
                method=repr(method.type),
                how=tunes[method.type],
                model=repr(model),
            )
        return method

    @field_validator("hyperparameters")
    @classmethod
    def _one_place(cls, hyperparameters: Hyperparameters | None, info: ValidationInfo):
        method = info.data.get("method")
        if hyperparameters and hyperparameters.given() and method and method.hyperparameters():
            raise rule(f"give hyperparameters either at the top level or in method.{method.type}, not both")
        return hyperparameters

    def job_hyperparameters(self) -> dict:
        """What the job row keeps: the hyperparameters given, and the method unless it is supervised,
        with a reinforcement job's grader (they travel with them, so the job table needs no column
        of its own)."""
        given = (self.hyperparameters.given() if self.hyperparameters else {}) or (
            self.method.hyperparameters() if self.method else {}
        )
        if self.method and self.method.type != "supervised":
            given["method"] = self.method.type
        if self.method and self.method.reinforcement:
            given["grader"] = self.method.reinforcement.grader
        return given
