"""Tool parameter schemas: checked as JSON Schema, and used to check a call's arguments.

BFCL writes `"type": "dict"` (and `float`, `tuple`, `any`) where JSON Schema says object
(number, array, any type); those are read as JSON Schema's, at every depth. The tool keeps the
schema as written: that is what the model is shown.
"""

from __future__ import annotations

from jsonschema import SchemaError, ValidationError
from jsonschema.exceptions import best_match
from jsonschema.validators import validator_for

_BFCL_TYPES = {"dict": "object", "float": "number", "tuple": "array"}


def as_json_schema(schema):
    """The schema with BFCL's Python type names replaced by JSON Schema's, recursively."""
    if isinstance(schema, list):
        return [as_json_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key == "type" and value == "any":
            continue  # no constraint
        if key == "type" and isinstance(value, str | list):
            value = [_BFCL_TYPES.get(v, v) for v in value] if isinstance(value, list) else _BFCL_TYPES.get(value, value)
        out[key] = as_json_schema(value)
    return out


def schema_validator(parameters: dict):
    """A validator of arguments against `parameters`; SchemaError (message, path) when it is not JSON Schema."""
    schema = as_json_schema(parameters)
    cls = validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def schema_problem(error: SchemaError) -> str:
    at = "/".join(str(p) for p in error.path)
    return f"not a valid JSON Schema: {error.message}" + (f" (at {at})" if at else "")


def arguments_problem(validator, arguments: dict) -> str | None:
    """Why `arguments` do not match the schema (the most relevant error), or None."""
    error: ValidationError | None = best_match(validator.iter_errors(arguments))
    if error is None:
        return None
    at = "/".join(str(p) for p in error.path)
    return error.message + (f" (at {at})" if at else "")
