"""Streaming readers: one file, a glob, a folder of shards, or a `datasets` save_to_disk folder.

Records come out one at a time with the file and line (row) they came from, so memory stays
bounded however large the data is. JSON Lines records stay raw text here: the tokenising workers
parse them (data/build.py), which spreads the JSON parsing over the cores too. A JSON array has
to be parsed whole (it is one value); prefer JSON Lines for large data.
"""

from __future__ import annotations

import csv
import glob
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import xxhash

from tunesmith.data.formats import (
    FORMATS,
    LineError,
    csv_mapping,
    csv_rows,
    detect_from_records,
    json_line,
    paragraphs,
    read_data_text,
)
from tunesmith.errors import TunesmithError

SHARD_SUFFIXES = (".jsonl", ".json", ".csv", ".txt", ".parquet", ".arrow")
# Rows handed over per Parquet / Arrow record batch: bounds memory, amortises the conversion.
ARROW_BATCH_ROWS = 4096


@dataclass(frozen=True)
class Source:
    """What the data setting names: its files in order and their one format."""

    spec: str
    files: tuple[str, ...]
    format: str
    columns: dict[str, str] | None  # CSV: role -> column

    @property
    def kind(self) -> str:
        return file_kind(self.files[0])

    def size_bytes(self) -> int:
        return sum(Path(f).stat().st_size for f in self.files)


def file_kind(name: str) -> str:
    """How a file stores records: jsonl, json (an array), csv, txt or arrow (Parquet, datasets folders)."""
    suffix = Path(name).suffix.lower()
    if suffix in (".parquet", ".arrow"):
        return "arrow"
    if suffix == ".json" and _starts_with_bracket(name):
        return "json"
    return {".csv": "csv", ".txt": "txt"}.get(suffix, "jsonl")


def data_files(spec: str) -> tuple[str, ...]:
    """The files `spec` names, sorted: a file, a glob, a folder of shards, or a save_to_disk folder."""
    path = Path(spec)
    if path.is_file():
        return (str(path),)
    if path.is_dir():
        if (path / "state.json").is_file():  # datasets' save_to_disk: Arrow stream files + JSON state
            state = json.loads((path / "state.json").read_text())
            files = [str(path / entry["filename"]) for entry in state.get("_data_files", [])]
        else:
            files = sorted(str(p) for p in path.iterdir() if p.suffix.lower() in SHARD_SUFFIXES and p.is_file())
        if not files:
            raise TunesmithError(f"{spec}: the folder holds no data files ({', '.join(SHARD_SUFFIXES)})")
    elif glob.has_magic(spec):
        files = sorted(p for p in glob.glob(spec) if Path(p).is_file())
        if not files:
            raise TunesmithError(f"{spec}: no file matches")
    else:
        raise TunesmithError(f"data file not found: {spec}")
    suffixes = {Path(f).suffix.lower() for f in files}
    if len(suffixes) > 1:
        raise TunesmithError(f"{spec}: shards of one dataset must share a format; found {', '.join(sorted(suffixes))}")
    return tuple(files)


def check_data_paths(data, fields: tuple[str, ...]) -> None:
    """Each of the config's data `fields` that is set names something that exists (a file, a folder
    or a glob with a match): checked before any model loads, so a typo costs no model load."""
    for field in fields:
        spec = getattr(data, field)
        if spec is None or Path(spec).exists() or (glob.has_magic(spec) and glob.glob(spec)):
            continue
        where = "" if Path(spec).is_absolute() else f", relative to the working directory {Path.cwd()}"
        raise TunesmithError(f"data file not found: {spec} (data.{field}{where})")


def open_source(spec: str, format: str = "auto", columns: dict[str, str] | None = None) -> Source:
    if format != "auto" and format not in FORMATS:
        raise TunesmithError(f"unknown data format {format!r} (expected auto, {', '.join(FORMATS)})")
    files = data_files(spec)
    first = files[0]
    suffix = Path(first).suffix.lower()
    if suffix in (".parquet", ".arrow"):
        detected = detect_from_records(first, [dict.fromkeys(_arrow_schema(first).names)])
    elif suffix == ".csv":
        detected = "csv"
    elif suffix == ".txt":
        detected = "text"
    else:
        detected = detect_from_records(first, (value for _, value, _ in _json_values(first)))
    format = detected if format == "auto" else format
    if columns is not None and format != "csv":
        raise TunesmithError(f"{spec}: a column mapping only applies to CSV files, not {format}")
    if format == "csv":
        columns = csv_mapping(first, _csv_header(first), columns)
    return Source(spec, files, format, columns)


def first_keys(spec: str) -> set[str]:
    """The keys of the first JSON object (a Parquet / Arrow file: its columns) of the data `spec`
    names, read lazily; empty for CSV and text files."""
    first = data_files(spec)[0]
    kind = file_kind(first)
    if kind == "arrow":
        return set(_arrow_schema(first).names)
    if kind in ("json", "jsonl"):
        return next((set(value) for _, value, _ in _json_values(first) if isinstance(value, dict)), set())
    return set()


def content_hash(files: tuple[str, ...]) -> str:
    """A digest of the files' bytes (and names' order): what the token store is keyed by.

    xxh3-128 reads ~6 GB/s here against blake2b's 0.6: at a million examples this hash is on the
    path to the first step of every run, and a cache key needs no cryptographic strength."""
    digest = xxhash.xxh3_128()
    for name in files:
        hash_file(digest, name)
        digest.update(b"\0file\0")
    return digest.hexdigest()


def hash_file(digest, path) -> None:
    """Feed the bytes of the file at `path` to `digest`, 4 MB at a time."""
    with open(path, "rb") as fh:
        while block := fh.read(1 << 22):
            digest.update(block)


def records(source: Source, errors: list[LineError]) -> Iterator[tuple[str, int, object, int]]:
    """(file, line, value, bytes read so far) per record; a CSV row with the wrong field count goes to `errors`.

    value: a raw JSON Lines string, a parsed JSON value, a dict of a row's cells (CSV: keyed by role),
    or a .txt paragraph's text.
    """
    done = 0
    for name in source.files:
        reader = {"jsonl": _jsonl, "json": _json_array, "csv": _csv, "txt": _txt, "arrow": _arrow}[file_kind(name)]
        for line, value, position in reader(name, source, errors):
            yield name, line, value, done + position
        done += Path(name).stat().st_size


def _starts_with_bracket(name: str) -> bool:
    with open(name, "rb") as fh:
        return fh.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"[")


def _lines(name: str) -> Iterator[tuple[int, str, int]]:
    """(line number, text without "\\n", bytes read) of a UTF-8 file, read a line at a time."""
    with open(name, "rb") as fh:
        position = 0
        for number, raw in enumerate(fh, 1):
            position += len(raw)
            try:
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise TunesmithError(
                    f"{name}:{number}: not valid UTF-8 (byte 0x{raw[e.start]:02x}); save the file as UTF-8"
                ) from None
            yield number, text.rstrip("\r\n") if text.endswith("\n") else text, position


def _jsonl(name: str, source: Source, errors) -> Iterator[tuple[int, object, int]]:
    # Only "\n" ends a JSON Lines record (binary lines split there alone): U+2028 may sit in strings.
    for number, text, position in _lines(name):
        if text.strip():
            yield number, text, position


def _json_values(name: str) -> Iterator[tuple[int, object, int]]:
    """Parsed values of a JSON array or JSON Lines file (for format detection: lazily)."""
    if _starts_with_bracket(name):
        yield from _json_array(name, None, None)
        return
    for number, text, position in _lines(name):
        if text.strip():
            yield number, json_line(text), position


def _json_array(name: str, source, errors) -> Iterator[tuple[int, object, int]]:
    text = read_data_text(name)
    try:
        items = json.loads(text)
    except json.JSONDecodeError as e:
        raise TunesmithError(f"{name}:{e.lineno}: invalid JSON array: {e.msg}") from None
    size = len(text)
    for index, item in enumerate(items, 1):
        yield index, item, size * index // len(items)


def _csv_header(name: str) -> list[str]:
    with open(name, encoding="utf-8-sig", newline="") as fh:
        try:
            return next(csv.reader(fh))
        except StopIteration:
            raise TunesmithError(f"{name}: no examples (the file is empty)") from None


def _csv(name: str, source: Source, errors: list[LineError]) -> Iterator[tuple[int, object, int]]:
    with open(name, encoding="utf-8-sig", newline="") as fh:
        header, rows = csv_rows(name, fh, errors)
        index = {role: header.index(column) for role, column in source.columns.items()}
        for line, row in rows:
            yield line, {role: row[i] for role, i in index.items()}, fh.buffer.tell()  # read-ahead: near enough


def _txt(name: str, source, errors) -> Iterator[tuple[int, object, int]]:
    read = [0]  # bytes read so far, as the paragraphs are cut

    def texts():
        for _, text, read[0] in _lines(name):
            yield text

    for example in paragraphs(texts()):
        yield example.line, example.text, read[0]


def _arrow_schema(name: str):
    return _arrow_table(name).schema


def _arrow_table(name: str):
    """The file as a table; memory-mapped, so its rows are only read when converted."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if name.lower().endswith(".parquet"):
            return pq.ParquetFile(name)
        # datasets writes Arrow IPC streams (not the random-access file format).
        return pa.ipc.open_stream(pa.memory_map(name)).read_all()
    except (pa.ArrowInvalid, OSError) as e:
        raise TunesmithError(f"{name}: cannot read as Parquet / Arrow: {e}") from None


def _arrow(name: str, source, errors) -> Iterator[tuple[int, object, int]]:
    table = _arrow_table(name)
    if hasattr(table, "iter_batches"):  # Parquet: decoded a record batch at a time
        rows, batches = table.metadata.num_rows, table.iter_batches(batch_size=ARROW_BATCH_ROWS)
    else:
        rows, batches = table.num_rows, table.to_batches(ARROW_BATCH_ROWS)
    size = Path(name).stat().st_size
    line = 0
    for batch in batches:
        for row in batch.to_pylist():
            line += 1
            yield line, row, size * line // max(rows, 1)
