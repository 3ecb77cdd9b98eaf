"""The code's layering stays true: imports point down, no cycles, no private names across packages."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"


def test_import_linter_contracts_are_kept():
    """The contracts in pyproject.toml ([tool.importlinter]): layers top to bottom, acyclic siblings."""
    lint = Path(sys.executable).parent / "lint-imports"
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    result = subprocess.run(
        [str(lint), "--no-cache", str(ROOT / "pyproject.toml")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def _package(module: str) -> str:
    """`tunesmith.data.formats` -> `tunesmith.data`; a top-level module is its own package."""
    return ".".join(module.split(".")[:2])


def _private_imports() -> list[str]:
    found = []
    for path in sorted((SRC / "tunesmith").rglob("*.py")):
        importer = ".".join(path.relative_to(SRC).with_suffix("").parts)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not (isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tunesmith")):
                continue
            for alias in node.names:
                if alias.name.startswith("_") and _package(node.module) != _package(importer):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {node.module}.{alias.name}")
    return found


def test_no_private_name_is_imported_across_packages():
    assert _private_imports() == []


@pytest.mark.parametrize("method", ["lora", "dpo"])
def test_the_decoder_objectives_implement_the_objective_interface(method, tmp_path):
    from tunesmith.config import config_from_dict
    from tunesmith.train.objective import Objective
    from tunesmith.train.recipe import objective_for

    cfg = config_from_dict(
        {"model": "m", "data": {"train": "t.jsonl"}, "method": {"name": method}, "out_dir": str(tmp_path)}
    )
    objective = objective_for(cfg, 0, "cpu")
    assert isinstance(objective, Objective)
    assert objective.sums[0] == "loss"
