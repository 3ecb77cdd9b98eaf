"""``tunesmith grader validate`` and ``tunesmith grader run``: the graders the service and
training use, on the command line (registered on the main CLI by add_grader_commands)."""

from __future__ import annotations

import json
from pathlib import Path

from tunesmith.errors import TunesmithError


def _json_argument(text: str, what: str):
    """Inline JSON, or @FILE / a path to a JSON file."""
    source = text[1:] if text.startswith("@") else text
    if not text.lstrip().startswith(("{", "[")) and Path(source).is_file():
        where, text = source, Path(source).read_text(encoding="utf-8")
    else:
        where = what
    try:
        return json.loads(text)
    except ValueError as error:
        raise TunesmithError(f"{where}: not valid JSON: {error}") from None


def _grader(text: str):
    from tunesmith.graders import GraderError, parse_grader

    try:
        return parse_grader(_json_argument(text, "the grader"))
    except GraderError as error:
        raise TunesmithError(f"invalid grader: {error}") from None


def _validate(args) -> int:
    from tunesmith.graders.data import check

    grader = _grader(args.grader)
    print(f"grader {grader.name!r} ({grader.type}): ok")
    if not args.data:
        return 0
    data, listed, counts = check(args.data, grader)
    print(f"{data.path}: {len(data.examples)} prompts, {len(data.errors)} with problems")
    for issue in listed:
        print(f"  {issue}")
    for kind, n in counts.items():
        print(f"  ... and {n} more ({kind})")
    return 1 if data.errors else 0


def _run(args) -> int:
    from tunesmith.graders import grade, make_sample

    grader = _grader(args.grader)
    item = _json_argument(args.item, "--item") if args.item else {}
    if not isinstance(item, dict):
        raise TunesmithError("--item must be a JSON object (the dataset row the grader reads)")
    result = grade(grader, make_sample(args.sample), item)
    report = {
        "reward": result.reward,
        "passed": result.passed,
        "sub_rewards": result.sub_rewards,
        "errors": [flag for flag, raised in result.errors.items() if raised],
        "messages": result.messages,
    }
    print(json.dumps(report, indent=2, ensure_ascii=False))
    return 0


def add_grader_commands(subparsers) -> None:
    grader = subparsers.add_parser("grader", help="check or try an OpenAI-format grader (JSON)")
    commands = grader.add_subparsers(dest="grader_command", required=True)
    p = commands.add_parser("validate", help="check a grader, and optionally a reinforcement JSONL file against it")
    p.add_argument("grader", help="the grader: a JSON file or inline JSON")
    p.add_argument("--data", help="reinforcement JSONL: every line must hold the item fields the grader reads")
    p.set_defaults(func=_validate)
    p = commands.add_parser("run", help="grade one model answer")
    p.add_argument("grader", help="the grader: a JSON file or inline JSON")
    p.add_argument("--sample", required=True, help="the model's answer (sample.output_text)")
    p.add_argument("--item", help="the dataset row (item.*): a JSON file or inline JSON")
    p.set_defaults(func=_run)
