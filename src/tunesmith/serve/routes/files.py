"""/v1/files: upload (streamed, checked as JSONL), list, retrieve, content, delete."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

from fastapi import FastAPI, Query, Request
from fastapi.responses import FileResponse

from tunesmith.data.store import remove_stores_of
from tunesmith.serve.errors import APIError, found, in_use
from tunesmith.serve.routes.params import Org, page
from tunesmith.serve.settings import ServeSettings
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


def check_jsonl(path: Path) -> None:
    """Every non-blank line must be a JSON object (the data validator checks the fields later)."""
    bad, count = [], 0
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            count += 1
            try:
                value = json.loads(raw.decode("utf-8-sig" if number == 1 else "utf-8"))
                if not isinstance(value, dict):
                    bad.append(f"line {number}: a JSON {type(value).__name__}, not an object")
            except UnicodeDecodeError:
                bad.append(f"line {number}: not valid UTF-8")
            except json.JSONDecodeError as error:
                bad.append(f"line {number}: not valid JSON ({error.msg})")
    if bad:
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        raise APIError(
            400,
            "Invalid file format for fine-tune: the file must be JSONL, one JSON object per line; "
            + "; ".join(bad[:5])
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
    checks = app.state.executors["upload-checks"]

    @app.post("/v1/files")
    async def upload_file(request: Request, org: Org):
        file_id = new_id("file-")
        path = store.files_dir / f"{file_id}.jsonl"  # the client's file name is never part of a path
        partial = store.files_dir / f"{UPLOAD_PREFIX}{file_id}"  # removed at start if the server dies
        checks.check(org["id"])  # at its cap of checks: refused before the body is read and written
        upload = await receive_upload(request, partial, settings.max_upload_bytes)
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
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        name = (upload.filename or "upload.jsonl").replace("\\", "/").rsplit("/", 1)[-1][:255] or "upload.jsonl"
        return file_object(store.add_file(file_id, org["id"], name, purpose, upload.size, str(path)))

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
