"""/v1/files: upload (streamed, checked as JSONL), list, retrieve, content, delete."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

from fastapi import FastAPI, Query, Request
from fastapi.responses import FileResponse

from tunesmith.data.store import remove_stores_of
from tunesmith.serve.errors import APIError, found, in_use
from tunesmith.serve.openapi import multipart_request
from tunesmith.serve.routes.params import Org, page
from tunesmith.serve.schemas import FileUpload
from tunesmith.serve.settings import ServeSettings
from tunesmith.serve.storage import Storage
from tunesmith.serve.store import Store, new_id
from tunesmith.serve.uploads import receive_upload

UPLOAD_PREFIX = ".upload-"  # an upload still arriving or being checked


def file_object(row: dict) -> dict:
    return {
        "id": row["id"],
        "object": "file",
        "bytes": row["bytes"],
        "created_at": row["created_at"],
        "filename": row["filename"],
        "purpose": row["purpose"],
        "status": row["status"],
        "status_details": None,
        "expires_at": None,
    }


MAX_LINE_BYTES = 8 * 1024 * 1024  # one example; a 128k-token conversation is well under 1 MB


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _line_problem(raw: bytes, number: int) -> str | None:
    """Why one line is not a JSON object, or None. Every error json.loads can raise on hostile input is
    caught: a 5,000-digit integer (ValueError), ``[`` nested 100,000 deep (RecursionError), NaN."""
    try:
        value = json.loads(raw.decode("utf-8-sig" if number == 1 else "utf-8"), parse_constant=_refuse_constant)
    except UnicodeDecodeError:
        return "not valid UTF-8"
    except json.JSONDecodeError as error:
        return f"not valid JSON ({error.msg})"
    except RecursionError:
        return "nested too deeply"
    except ValueError as error:  # an integer past Python's digit limit, NaN or Infinity
        return f"not valid JSON ({str(error).split(';')[0]})"
    return None if isinstance(value, dict) else f"a JSON {type(value).__name__}, not an object"


def check_jsonl(path: Path, max_line_bytes: int = MAX_LINE_BYTES) -> None:
    """Every non-blank line must be a JSON object (the data validator checks the fields later).

    Lines are read with a cap, so memory stays bounded by ``max_line_bytes`` whatever the file holds.
    """
    bad, n_bad, count, number = [], 0, 0, 0  # the first five problems are kept, the rest counted

    def note(problem: str) -> None:
        nonlocal n_bad
        n_bad += 1
        if len(bad) < 5:
            bad.append(f"line {number}: {problem}")

    with open(path, "rb") as fh:
        while raw := fh.readline(max_line_bytes + 1):
            number += 1
            if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
                note(f"longer than {max_line_bytes} bytes")
                while raw and not raw.endswith(b"\n"):  # skip the rest of it, a bounded piece at a time
                    raw = fh.readline(2**16)
                count += 1
                continue
            if not raw.strip():
                continue
            count += 1
            problem = _line_problem(raw, number)
            if problem:
                note(problem)
    if bad:
        more = f" (and {n_bad - 5} more)" if n_bad > 5 else ""
        raise APIError(
            400,
            "Invalid file format for fine-tune: the file must be JSONL, one JSON object per line; "
            + "; ".join(bad)
            + more,
            param="file",
            code="invalid_file_format",
        )
    if count == 0:
        raise APIError(
            400,
            "Invalid file: the file has no examples (it is empty)",
            param="file",
            code="invalid_file_format",
        )


def add_routes(app: FastAPI) -> None:
    store: Store = app.state.store
    settings: ServeSettings = app.state.settings
    storage: Storage = app.state.storage
    checks = app.state.executors["upload-checks"]

    @app.post("/v1/files", openapi_extra=multipart_request(FileUpload))
    async def upload_file(request: Request, org: Org):
        file_id = new_id("file-")
        path = store.files_dir / f"{file_id}.jsonl"  # the client's file name is never part of a path
        partial = store.files_dir / f"{UPLOAD_PREFIX}{file_id}"  # removed at start if the server dies
        checks.check(org["id"])  # at its cap of checks: refused before the body is read and written
        with storage.reserve(org["id"]) as reservation:  # held until the file is registered
            upload = await receive_upload(request, partial, settings.max_upload_bytes, reservation.grow)
            return await _accept(org, upload, file_id, partial, path)

    async def _accept(org: dict, upload, file_id: str, partial: Path, path: Path) -> dict:
        try:
            purpose = upload.fields.get("purpose")
            if not purpose:
                raise APIError(400, "missing required parameter 'purpose'", param="purpose")
            if purpose != "fine-tune":
                raise APIError(400, f"purpose {purpose!r} is not supported; use 'fine-tune'", param="purpose")
            if upload.size < 0:
                raise APIError(400, "missing required parameter 'file' (a file part)", param="file")
            await checks.run(org["id"], check_jsonl, partial)  # reads the whole file: off the event loop
            partial.rename(path)
            name = (upload.filename or "upload.jsonl").replace("\\", "/").rsplit("/", 1)[-1][:255] or "upload.jsonl"
            return file_object(store.add_file(file_id, org["id"], name, purpose, upload.size, str(path)))
        except BaseException:  # a refusal, a full disk (the database refused the row): nothing stays
            partial.unlink(missing_ok=True)
            path.unlink(missing_ok=True)
            raise

    @app.get("/v1/files")
    def list_files(
        org: Org,
        purpose: str | None = None,
        after: str | None = None,
        limit: Annotated[int, Query(ge=1, le=10000)] = 10000,
        order: Annotated[str, Query(pattern="^(asc|desc)$")] = "desc",
    ):
        return page(store.list_files(org["id"], purpose, after, limit + 1, order), limit, file_object)

    def get_file(org: dict, file_id: str) -> dict:
        return found(store.file(org["id"], file_id), "file", file_id, "file_id")

    @app.get("/v1/files/{file_id}")
    def retrieve_file(file_id: str, org: Org):
        return file_object(get_file(org, file_id))

    @app.get("/v1/files/{file_id}/content")
    def file_content(file_id: str, org: Org):
        row = get_file(org, file_id)
        return FileResponse(row["path"], media_type="application/octet-stream", filename=row["filename"])

    @app.delete("/v1/files/{file_id}")
    def delete_file(file_id: str, org: Org):
        row = get_file(org, file_id)
        users = store.active_jobs_using_file(org["id"], file_id)
        if users:
            raise in_use(f"file {file_id} is used by fine-tuning job {users[0]}, which has not finished", "file_id")
        store.delete_file(org["id"], file_id)
        Path(row["path"]).unlink(missing_ok=True)
        remove_stores_of(row["path"])  # its tokens (data/store.py), built when a job trained on it
        return {"id": file_id, "object": "file", "deleted": True}
