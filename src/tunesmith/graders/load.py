"""A grader as a config names it (rl.grader): OpenAI's grader JSON inline, the path of a file holding
it, or the path of a ``.py`` file defining ``grade(sample, item)``: a python grader named for the file.
A multi grader's named graders may be such paths too, so a config can join graders kept as files
(``graders: {slots: examples/e2e_slot_coverage.py, length: examples/e2e_length.py}``). Only configs
read paths: the service parses the JSON its clients send (``parse_grader``), where a path is refused."""

from __future__ import annotations

import json
from pathlib import Path

from tunesmith.errors import TunesmithError
from tunesmith.graders.schema import Grader, GraderError, parse_grader


def _read(spec, key: str):
    """The grader JSON ``spec`` names when it is a path; ``spec`` itself otherwise."""
    if not isinstance(spec, str):
        return spec
    path = Path(spec)
    if not path.is_file():
        raise TunesmithError(f"{key}: {spec} is not a file (give the grader JSON inline or a path)")
    if path.suffix == ".py":
        return {"type": "python", "name": path.stem, "source": path.read_text()}
    try:
        return json.loads(path.read_text())
    except ValueError as error:
        raise TunesmithError(f"{key}: {path} is not JSON: {error}") from error


def _resolve(spec: dict | str, key: str):
    """``spec`` with the file it names read, and a multi grader's named files read in turn."""
    raw = _read(spec, key)
    graders = raw.get("graders") if isinstance(raw, dict) and raw.get("type") == "multi" else None
    if isinstance(graders, dict) and not isinstance(graders.get("type"), str):
        raw = {**raw, "graders": {name: _read(sub, f"{key}.graders.{name}") for name, sub in graders.items()}}
    return raw


def load_grader(spec: dict | str, key: str = "rl.grader") -> Grader:
    """The parsed grader; a missing file, bad JSON or a grader that does not check is a TunesmithError
    naming `key` or the file."""
    where = spec if isinstance(spec, str) else key
    raw = _resolve(spec, key)
    try:
        return parse_grader(raw)
    except GraderError as error:
        raise TunesmithError(f"{where}: {error}") from error
