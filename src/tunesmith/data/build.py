"""Validate and tokenize a data source into a token store, in worker processes.

The parent streams records (data/sources.py) in chunks to `num_workers` processes and appends
their results to the store in the order the chunks were read, so the store's order is the file's
whatever the number of workers. Each worker parses its records (JSON Lines: the JSON too),
checks them, renders them with the chat template and tokenizes them: all the per-example work.
At most two chunks per worker are in flight, which bounds memory however long the file is.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from itertools import chain
from pathlib import Path

import numpy as np

from tunesmith.data.formats import Example, LineError, csv_example, json_line, record_example, with_system
from tunesmith.data.issues import IssueLog
from tunesmith.data.sources import Source, records
from tunesmith.data.store import StoreWriter, TokenStore, open_store, token_dtype
from tunesmith.data.tokenize import IGNORE_INDEX, encode_text, text_labels, text_start, tokenize_chats
from tunesmith.errors import TunesmithError
from tunesmith.progress import WorkProgress

# Records per chunk: large enough that sending a chunk costs little next to tokenizing it.
CHUNK_RECORDS = 1000
# Below this size the data is tokenized in this process: starting workers (each imports
# transformers and unpickles the tokenizer) took longer on 2 cores than tokenizing E2E's 1 MB here.
IN_PROCESS_BYTES = 4 << 20
OVERLENGTH = ("error", "drop", "truncate_prompt")


@dataclass(frozen=True)
class BuildOptions:
    files: tuple[str, ...]
    format: str
    columns: dict[str, str] | None
    system: str | None
    max_seq_len: int
    overlength: str


@dataclass
class ChunkResult:
    arrays: dict[str, np.ndarray]
    issues: list[LineError]
    over: int  # examples longer than max_seq_len
    longest: int  # tokens of the longest of them
    dropped: int


_worker: dict = {}  # this worker process's tokenizer and options (set once by _start_worker)


def _start_worker(tokenizer, options: BuildOptions) -> None:
    # The processes share the cores already: a tokenizer's own thread pool would only contend.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _worker.update(tokenizer=tokenizer, options=options)


def content_hash(example: Example) -> int:
    """64 bits of the example's content: duplicates and train/validation overlap without the texts."""
    digest = hashlib.blake2b(repr((example.messages, example.text, example.tools)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def _example(options: BuildOptions, file_index: int, line: int, value, raw: bool):
    name = options.files[file_index]
    if options.format == "text" and isinstance(value, str) and not raw:  # a .txt paragraph
        return Example(line, text=value), []
    if options.format == "csv":
        example, problems = csv_example(name, line, value, options.columns)
    else:
        example, problems = record_example(name, line, json_line(value) if raw else value, options.format)
    if example is not None and example.text is None:
        example = replace(example, messages=with_system(example.messages, options.system))
    return example, problems


def _fit(ids: list[int], labels: list[int], name: str, line: int, options: BuildOptions, result: ChunkResult):
    """(ids, labels) within max_seq_len as data.overlength says, or None (with the issue recorded)."""
    limit, length = options.max_seq_len, len(ids)
    if length <= limit:
        return ids, labels
    result.over += 1
    result.longest = max(result.longest, length)
    too_long = f"{length} tokens > max_seq_len {limit}"
    if options.overlength == "error":
        result.issues.append(LineError(name, line, None, too_long))
        return None
    if options.overlength == "drop":
        result.dropped += 1
        result.issues.append(LineError(name, line, None, f"{too_long}: dropped", severity="warning"))
        return None
    cut = length - limit
    first_label = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
    if cut > first_label:
        reason = f"{too_long}: the answer alone is {length - first_label} tokens, cutting the prompt cannot fit it"
        result.issues.append(LineError(name, line, None, reason))
        return None
    result.issues.append(LineError(name, line, None, f"{too_long}: cut {cut} prompt tokens", severity="warning"))
    return ids[cut:], labels[cut:]


def tokenize_chunk(chunk: list[tuple[int, int, object, bool]]) -> ChunkResult:
    """Check and tokenize (file index, line, value, raw JSON?) records in this worker."""
    tokenizer, options = _worker["tokenizer"], _worker["options"]
    result = ChunkResult({}, [], 0, 0, 0)
    ids_parts, mask_parts, lengths, label_counts, lines, files, hashes = [], [], [], [], [], [], []
    parsed = []
    for file_index, line, value, raw in chunk:
        example, problems = _example(options, file_index, line, value, raw)
        result.issues += problems  # errors, or warnings of a kept example
        if example is not None:
            parsed.append((file_index, line, example))
    chats = iter(tokenize_chats(tokenizer, [example for *_, example in parsed if example.text is None]))
    start = text_start(tokenizer)
    for file_index, line, example in parsed:
        name = options.files[file_index]
        if example.text is not None:
            ids = encode_text(tokenizer, example.text, start)
            mask = [label != IGNORE_INDEX for label in text_labels(ids, start)]
        else:
            whole = next(chats)
            if isinstance(whole, TunesmithError):
                result.issues.append(LineError(name, line, None, str(whole).removeprefix(f"line {line}: ")))
                continue
            if not any(label != IGNORE_INDEX for label in whole[1]):
                result.issues.append(LineError(name, line, None, "no tokens to train on"))
                continue
            fitted = _fit(*whole, name, line, options, result)
            if fitted is None:
                continue
            ids, labels = fitted
            mask = [label != IGNORE_INDEX for label in labels]
        ids_parts.append(ids)
        mask_parts.append(mask)
        lengths.append(len(ids))
        label_counts.append(sum(mask))
        lines.append(line)
        files.append(file_index)
        hashes.append(content_hash(example))
    total = sum(lengths)
    result.arrays = {
        "tokens": np.fromiter(chain.from_iterable(ids_parts), dtype=np.int64, count=total),
        "label_mask": np.fromiter(chain.from_iterable(mask_parts), dtype=np.uint8, count=total),
        "lengths": np.array(lengths, dtype=np.int32),
        "label_counts": np.array(label_counts, dtype=np.int32),
        "lines": np.array(lines, dtype=np.int64),
        "file_index": np.array(files, dtype=np.int32),
        "hashes": np.array(hashes, dtype=np.uint64),
    }
    return result


def _chunks(source: Source, reader_errors: list[LineError]):
    index = {name: i for i, name in enumerate(source.files)}
    raw = source.kind == "jsonl"
    chunk = []
    for name, line, value, done in records(source, reader_errors):
        chunk.append((index[name], line, value, raw))
        if len(chunk) == CHUNK_RECORDS:
            yield chunk, done
            chunk = []
    if chunk:
        yield chunk, source.size_bytes()


def _results(chunks, tokenizer, options: BuildOptions, num_workers: int):
    """(chunk result, bytes read) in the order the chunks were read."""
    if num_workers <= 1:
        _start_worker(tokenizer, options)
        for chunk, done in chunks:
            yield tokenize_chunk(chunk), done
        return
    # forkserver: a clean process per worker (fork would copy the parent's threads and memory);
    # the server imports this module once, so each worker starts with transformers loaded.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    with ProcessPoolExecutor(num_workers, context, initializer=_start_worker, initargs=(tokenizer, options)) as pool:
        pending = deque()
        for chunk, done in chunks:
            pending.append((pool.submit(tokenize_chunk, chunk), done))
            if len(pending) >= 2 * num_workers:
                future, at = pending.popleft()
                yield future.result(), at
        while pending:
            future, at = pending.popleft()
            yield future.result(), at


def build_store(source: Source, tokenizer, options: BuildOptions, path: Path, num_workers: int) -> TokenStore:
    writer = StoreWriter(path, token_dtype(len(tokenizer)))
    log, reader_errors = IssueLog(source.files), []
    over, longest, dropped = 0, 0, 0
    try:
        with WorkProgress(f"validate + tokenize {source.spec}", source.size_bytes()) as progress:
            workers = num_workers if source.size_bytes() >= IN_PROCESS_BYTES else 1
            for result, done in _results(_chunks(source, reader_errors), tokenizer, options, workers):
                writer.append(result.arrays)
                log.extend(result.issues)
                log.extend(reader_errors)
                reader_errors.clear()
                over, longest, dropped = over + result.over, max(longest, result.longest), dropped + result.dropped
                progress.update(done, writer.counts["lengths"])
            log.extend(reader_errors)
    except BaseException:
        writer.abort()
        raise
    issues, unlisted = log.done()
    if not writer.counts["lengths"] and not issues:
        writer.abort()
        raise TunesmithError(f"{source.spec}: no examples")
    meta = {
        "files": list(source.files),
        "format": source.format,
        "issues": [issue.__dict__ for issue in issues],
        "unlisted": unlisted,
        "overlength": {"count": over, "longest": longest, "dropped": dropped, "max_seq_len": options.max_seq_len},
    }
    writer.commit(meta)
    store = open_store(path)
    if store is None:
        raise TunesmithError(f"the token store {path} could not be read back after writing it (disk full?)")
    return store


def examples_at(source: Source, options: BuildOptions, wanted: list[tuple[int, int]]) -> list[Example]:
    """The examples at (file index, line) positions, in that order, read back from the source
    (the store keeps tokens, not texts); reading stops once all are found."""
    missing = {(int(f), int(line)) for f, line in wanted}
    found = {}
    raw = source.kind == "jsonl"
    index = {name: i for i, name in enumerate(source.files)}
    for name, line, value, _ in records(source, []):
        if (index[name], line) in missing:
            found[index[name], line] = _example(options, index[name], line, value, raw)[0]
            missing.discard((index[name], line))
            if not missing:
                break
    return [found[int(f), int(line)] for f, line in wanted if found.get((int(f), int(line))) is not None]
