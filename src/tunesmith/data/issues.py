"""Problems found in a pass over millions of examples, in bounded memory.

The first LISTED problems (by file and line) are kept whole, so they can be shown with their
location; every other one is only counted by kind ("unknown role", "empty content"), so a file
with a bad line in every record costs a few counters, not a list of a million errors.
"""

from __future__ import annotations

import re
from collections import Counter

from tunesmith.data.formats import LineError

LISTED = 50


def kind(issue: LineError) -> str:
    """The reason without its particulars: "unknown role 'bot' (expected ...)" -> "unknown role"."""
    reason = re.split(r" \(|: ", issue.reason, maxsplit=1)[0]
    reason = re.sub(r"'[^']*'|\"[^\"]*\"", "", reason)
    return " ".join(re.sub(r"\d+", "N", reason).split()) or issue.reason


class IssueLog:
    def __init__(self, files: tuple[str, ...] = ()):
        self.order = {name: i for i, name in enumerate(files)}
        self.listed: list[LineError] = []
        self.unlisted: Counter[tuple[str, str]] = Counter()  # (severity, kind) -> count

    def add(self, issue: LineError) -> None:
        self.listed.append(issue)
        if len(self.listed) > 4 * LISTED:
            self._trim()

    def extend(self, issues) -> None:
        for issue in issues:
            self.add(issue)

    def count(self, severity: str, name: str, n: int) -> None:
        """Issues known only by their number (already past a listing elsewhere)."""
        if n:
            self.unlisted[severity, name] += n

    def _trim(self) -> None:
        self.listed.sort(key=lambda i: (self.order.get(i.path, len(self.order)), i.line))
        for issue in self.listed[LISTED:]:
            self.unlisted[issue.severity, kind(issue)] += 1
        del self.listed[LISTED:]

    def done(self) -> tuple[list[LineError], dict[str, int]]:
        """The listed issues in file and line order, and the counts of the rest ("error: unknown role")."""
        self._trim()
        counts = {f"{severity}: {name}": n for (severity, name), n in self.unlisted.most_common()}
        return self.listed, counts
