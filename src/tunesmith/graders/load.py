"""A grader as a config names it (rl.grader): OpenAI's grader JSON inline, the path of a file holding
it, or the path of a ``.py`` file defining ``grade(sample, item)``: a python grader named for the file."""

from __future__ import annotations

import json
from pathlib import Path

from tunesmith.errors import TunesmithError
from tunesmith.graders.schema import Grader, GraderError, parse_grader


def load_grader(spec: dict | str, key: str = "rl.grader") -> Grader:
    """The parsed grader; a missing file, bad JSON or a grader that does not check is a TunesmithError
    naming `key` or the file."""
    where = key
    if isinstance(spec, str):
        path = Path(spec)
        if not path.is_file():
            raise TunesmithError(f"{key}: {spec} is not a file (give the grader JSON inline or a path)")
        if path.suffix == ".py":
            return load_grader({"type": "python", "name": path.stem, "source": path.read_text()}, str(path))
        try:
            spec = json.loads(path.read_text())
        except ValueError as error:
            raise TunesmithError(f"{key}: {path} is not JSON: {error}") from error
        where = str(path)
    try:
        return parse_grader(spec)
    except GraderError as error:
        raise TunesmithError(f"{where}: {error}") from error
