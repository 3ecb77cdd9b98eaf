"""The published OpenAPI document (``/openapi.json``) describes the API as it answers.

Routes that read their body themselves (a job's JSON whatever its Content-Type, an upload streamed
as it arrives) name the pydantic model of that body with ``json_request``/``multipart_request``;
every operation lists the errors the service answers, in OpenAI's shape (``ErrorResponse``), and
none lists FastAPI's 422, which the service never sends (bad input is a 400).
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from tunesmith.serve.schemas import ErrorResponse

ERRORS = {
    "400": "The request is invalid (OpenAI's invalid_request_error).",
    "401": "No API key, or an unknown one.",
    "404": "No such object in the caller's organisation.",
    "409": "The object is in use (a file a job trains on, a model others are trained from).",
    "413": "The body is over a size limit, or the organisation's storage quota.",
    "429": "Over one of the organisation's caps; Retry-After says when to try again.",
    "507": "The server is low on disk space.",
}
_MODELS: dict[str, type[BaseModel]] = {}


def _ref(model: type[BaseModel]) -> dict:
    _MODELS[model.__name__] = model
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def json_request(model: type[BaseModel]) -> dict:
    """``openapi_extra`` of a route whose JSON body ``model`` validates."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": _ref(model)}}}}


def multipart_request(model: type[BaseModel]) -> dict:
    """``openapi_extra`` of a route whose multipart/form-data fields ``model`` describes."""
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": _ref(model)}}}}


def install(app: FastAPI) -> None:
    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            error = {"application/json": {"schema": _ref(ErrorResponse)}}
            for model in list(_MODELS.values()):
                body = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(body.pop("$defs", {}))
                components[model.__name__] = body
            for operation in (op for item in schema["paths"].values() for op in item.values()):
                responses = operation.setdefault("responses", {})
                responses.pop("422", None)
                for status, description in ERRORS.items():
                    responses.setdefault(status, {"description": description, "content": error})
            for unused in ("HTTPValidationError", "ValidationError"):
                components.pop(unused, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
