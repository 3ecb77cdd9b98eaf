"""The token store: every tokenized example of a data source, on disk, memory-mapped.

One folder per key ($TUNESMITH_HOME/cache/store/<key>/) holds flat arrays, one file each: all token
ids back to back, a label mask beside them (1 = loss on this token), and per example its offset,
length, label-token count, file and line, and a hash of its content (for duplicate and overlap
checks without holding any text). `meta.json` names the arrays' lengths and digests and carries
the validation results. No Python object per example: train, eval, the service and every process
of a distributed run map the same pages.

A store is built in a temporary folder and renamed into place only once complete (meta.json
written last), so a crash leaves no store; one whose files do not match their digests (truncated,
corrupted) is deleted and rebuilt, never read. Building takes a file lock, so when several
processes ask at once one builds and the others wait and then map it.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xxhash

from tunesmith.data.formats import LineError
from tunesmith.data.sources import hash_file
from tunesmith.data.tokenize import IGNORE_INDEX, TokenizedExample
from tunesmith.paths import tunesmith_home

STORE_VERSION = 3  # 2: digests are xxh3-128; 3: raw text begins with the BOS its tokenizer adds
META = "meta.json"
# Per-example arrays; `tokens` takes uint16 when the vocabulary fits (half the disk and page cache).
ARRAYS = {
    "tokens": None,
    "label_mask": np.uint8,
    "lengths": np.int32,
    "label_counts": np.int32,
    "lines": np.int64,
    "file_index": np.int32,
    "hashes": np.uint64,
}


def token_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32


def store_root() -> Path:
    return tunesmith_home() / "cache" / "store"


def _digest_file(path: Path) -> str:
    digest = xxhash.xxh3_128()
    hash_file(digest, path)
    return digest.hexdigest()


class StoreWriter:
    """Appends arrays chunk by chunk into a temporary folder; `commit` makes it the store."""

    def __init__(self, final: Path, tokens_dtype):
        self.final = final
        self.tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        self.dtypes = {name: np.dtype(dtype or tokens_dtype) for name, dtype in ARRAYS.items()}
        self.files = {name: open(self.tmp / f"{name}.bin", "wb") for name in ARRAYS}
        self.digests = {name: xxhash.xxh3_128() for name in ARRAYS}
        self.counts = dict.fromkeys(ARRAYS, 0)

    def append(self, arrays: dict[str, np.ndarray]) -> None:
        for name, values in arrays.items():
            data = np.ascontiguousarray(values, dtype=self.dtypes[name]).tobytes()
            self.files[name].write(data)
            self.digests[name].update(data)
            self.counts[name] += len(values)

    def commit(self, meta: dict) -> Path:
        for fh in self.files.values():
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
        meta = {
            **meta,
            "version": STORE_VERSION,
            "dtypes": {name: dtype.str for name, dtype in self.dtypes.items()},
            "counts": self.counts,
            "digests": {name: digest.hexdigest() for name, digest in self.digests.items()},
        }
        with open(self.tmp / META, "w") as fh:
            json.dump(meta, fh)
            fh.flush()
            os.fsync(fh.fileno())
        shutil.rmtree(self.final, ignore_errors=True)  # a damaged store left by an earlier run
        os.rename(self.tmp, self.final)
        directory = os.open(self.final.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        return self.final

    def abort(self) -> None:
        for fh in self.files.values():
            fh.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


@contextmanager
def build_lock(key: str):
    """Held while one process checks for, and if need be builds, the store `key`."""
    root = store_root()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{key}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def remove_stores_of(data_file: str | Path) -> int:
    """Delete every store built from `data_file` (under its build lock): the tokens of a deleted
    upload must not outlive it. Returns how many were deleted."""
    root, target = store_root(), str(Path(data_file).resolve())
    removed = 0
    for meta_file in root.glob(f"*/{META}") if root.is_dir() else ():
        try:
            files = json.loads(meta_file.read_text())["files"]
        except (OSError, ValueError, KeyError):
            continue
        if target in (str(Path(f).resolve()) for f in files):
            with build_lock(meta_file.parent.name):
                shutil.rmtree(meta_file.parent, ignore_errors=True)
            (root / f"{meta_file.parent.name}.lock").unlink(missing_ok=True)
            removed += 1
    return removed


@dataclass
class TokenStore:
    path: Path
    meta: dict
    arrays: dict[str, np.ndarray]
    offsets: np.ndarray  # example i's tokens are tokens[offsets[i]:offsets[i + 1]]

    @property
    def files(self) -> list[str]:
        return self.meta["files"]

    @property
    def n_examples(self) -> int:
        return self.meta["counts"]["lengths"]

    def issues(self) -> tuple[list[LineError], dict[str, int]]:
        return [LineError(**issue) for issue in self.meta["issues"]], dict(self.meta["unlisted"])

    def example(self, i: int) -> TokenizedExample:
        start, end = self.offsets[i], self.offsets[i + 1]
        ids = self.arrays["tokens"][start:end].astype(np.int64)
        labels = np.where(self.arrays["label_mask"][start:end] != 0, ids, IGNORE_INDEX)
        length = int(end - start)
        return TokenizedExample(ids.tolist(), labels.tolist(), int(self.arrays["lines"][i]), length)


def open_store(path: Path) -> TokenStore | None:
    """The store at `path`, memory-mapped; None (and the folder deleted) if it is incomplete or damaged."""
    try:
        meta = json.loads((path / META).read_text())
        if meta.get("version") != STORE_VERSION:
            raise ValueError("another version")
        arrays = {}
        for name in ARRAYS:
            file = path / f"{name}.bin"
            dtype = np.dtype(meta["dtypes"][name])
            if file.stat().st_size != meta["counts"][name] * dtype.itemsize:
                raise ValueError(f"{name} is cut short")
            # Reads every byte once per open (about 0.15 s per GB): a flipped bit must never become a token.
            if _digest_file(file) != meta["digests"][name]:
                raise ValueError(f"{name} does not match its digest")
            arrays[name] = np.memmap(file, dtype=dtype, mode="r") if meta["counts"][name] else np.zeros(0, dtype)
    except (OSError, ValueError, KeyError, TypeError):
        shutil.rmtree(path, ignore_errors=True)
        return None
    offsets = np.zeros(len(arrays["lengths"]) + 1, dtype=np.int64)
    np.cumsum(arrays["lengths"], out=offsets[1:])
    return TokenStore(path, meta, arrays, offsets)
