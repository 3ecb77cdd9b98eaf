"""A multipart upload parsed as it arrives: the file part goes straight to its destination file.

Nothing is spooled elsewhere first (Starlette's ``request.form()`` copies the whole body to a
temporary file before the route can look at its size), so a refused upload leaves no bytes on
disk: the destination is removed on any error, a 413 included.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from python_multipart.multipart import MultipartParser, parse_options_header

from tunesmith.serve.errors import APIError
from tunesmith.serve.limits import BodyTooLarge, file_too_large
from tunesmith.serve.storage import disk_full, insufficient_storage

MAX_FIELD_BYTES = 1024
MAX_FIELDS = 16


@dataclass
class Upload:
    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None
    size: int = -1  # bytes of the file part; -1 when the body had none


@dataclass
class _Part:
    headers: dict[bytes, bytes] = field(default_factory=dict)
    name: str = ""
    filename: str | None = None
    value: bytearray = field(default_factory=bytearray)


WRITE_BATCH_BYTES = 1024 * 1024


async def _write(out, pending: list[bytes]) -> None:
    """Write and flush ``pending`` in a thread: a busy disk stalls a write, and on the event loop
    that stall would hold every other request."""
    batch = list(pending)
    pending.clear()

    def write() -> None:
        out.writelines(batch)
        out.flush()

    await asyncio.to_thread(write)


async def receive_upload(request, destination: Path, limit: int, grow: Callable[[int], None]) -> Upload:
    """Parse the body into form fields and one file part written to ``destination``; ``grow`` is told
    of every piece of the file before it is written (it raises to refuse the upload)."""
    kind, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise APIError(400, "upload the file as multipart/form-data with fields 'file' and 'purpose'")
    upload = Upload()
    part = _Part()
    header_field, header_value = bytearray(), bytearray()
    pending: list[bytes] = []  # file bytes parsed from the current chunk, written after it

    def on_header_field(data, start, end):
        header_field.extend(data[start:end])

    def on_header_value(data, start, end):
        header_value.extend(data[start:end])

    def on_header_end():
        part.headers[bytes(header_field).lower()] = bytes(header_value)
        header_field.clear()
        header_value.clear()

    def on_headers_finished():
        _, options = parse_options_header(part.headers.get(b"content-disposition", b""))
        part.name = options.get(b"name", b"").decode("utf-8", "replace")
        filename = options.get(b"filename")
        part.filename = None if filename is None else filename.decode("utf-8", "replace")
        if part.filename is not None:
            if upload.size >= 0:
                raise APIError(400, "send one file per upload", param="file")
            upload.size, upload.filename = 0, part.filename

    def on_part_data(data, start, end):
        if part.filename is None:
            part.value.extend(data[start:end])
            if len(part.value) > MAX_FIELD_BYTES:
                raise APIError(400, f"form field {part.name!r} is longer than {MAX_FIELD_BYTES} bytes")
            return
        upload.size += end - start
        if upload.size > limit:
            raise file_too_large(limit)
        grow(end - start)
        pending.append(bytes(data[start:end]))

    def on_part_end():
        nonlocal part
        if part.filename is None:
            if len(upload.fields) >= MAX_FIELDS:
                raise APIError(400, f"more than {MAX_FIELDS} form fields")
            upload.fields[part.name] = part.value.decode("utf-8", "replace")
        part = _Part()

    parser = MultipartParser(
        boundary,
        {
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    try:
        with open(destination, "wb") as out:
            async for chunk in request.stream():
                parser.write(chunk)
                if sum(map(len, pending)) >= WRITE_BATCH_BYTES:
                    await _write(out, pending)
            parser.finalize()
            await _write(out, pending)
    except BaseException as error:  # a 413, a malformed body, a client gone: nothing stays on disk
        destination.unlink(missing_ok=True)
        if disk_full(error):
            raise insufficient_storage("the disk is full") from None
        if isinstance(error, Exception) and not isinstance(error, (APIError, BodyTooLarge, OSError)):
            raise APIError(400, f"the multipart body is malformed: {error}") from None
        raise
    return upload
