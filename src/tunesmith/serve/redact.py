"""What a client reads never names a place on the server: error messages, job errors and events
pass through ``public`` first, which turns paths under the service's home into names relative to
it (``runs/ftjob-…/out``) and the other folders a message can name (the token cache, the Python
installation, the temporary folder) into placeholders."""

from __future__ import annotations

import re
import sys
import tempfile
from functools import lru_cache
from pathlib import Path

from tunesmith.paths import tunesmith_home


@lru_cache(maxsize=8)
def _roots(home: Path) -> list[tuple[re.Pattern, str]]:
    roots = [(home, ""), (tunesmith_home(), "<cache>/"), (Path(tempfile.gettempdir()), "<tmp>/"), (Path.home(), "~/")]
    roots += [(Path(prefix), "<python>/") for prefix in {sys.prefix, sys.base_prefix}]
    spelled = {}
    for path, name in roots:
        for form in {str(path), str(path.resolve())}:
            spelled.setdefault(form.rstrip("/") + "/", name)
    # Longest first: the home is often inside the temporary folder. A root matches followed by a
    # path or standing alone, never as the start of a longer name ("/tmp" in "/tmpfiles").
    ordered = sorted(spelled.items(), key=lambda item: -len(item[0]))
    return [(re.compile(re.escape(root[:-1]) + r"(/|(?![\w.-]))"), name) for root, name in ordered]


def public(text: str, home: Path) -> str:
    """``text`` with every path under the server's folders made relative (see the module's doc)."""
    for pattern, name in _roots(Path(home)):
        text = pattern.sub(lambda m, name=name: name if m.group(1) else name.rstrip("/") or ".", text)
    return text
