"""Files: POST/GET /v1/files, GET/DELETE /v1/files/{id}, GET /v1/files/{id}/content."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, cast

from aiohttp import BodyPartReader, web

from trainer.api import SETTINGS, STORE, ApiError, list_response, page_limit, page_order, too_large
from trainer.store import PARTIAL_SUFFIX, new_id

MULTIPART_OVERHEAD = 64 * 1024  # boundaries and the purpose field around an upload's file bytes
MAX_PURPOSE_BYTES = 256
FILE_PURPOSES = frozenset({"fine-tune", "assistants", "batch", "user_data", "evals", "vision"})


def file_object(row: sqlite3.Row) -> dict[str, Any]:
    """Render a file as OpenAI does."""
    return {"id": row["id"], "object": "file", "bytes": row["bytes"], "created_at": row["created_at"],
            "filename": row["filename"], "purpose": row["purpose"], "status": "processed", "expires_at": None,
            "status_details": None}


async def upload_file(request: web.Request) -> web.Response:
    """POST /v1/files: a multipart upload with purpose and file.

    The bytes go to a temporary name and are renamed to the file's own name only once the file is recorded, so an
    aborted or refused upload leaves nothing behind (and leftovers of a crash are swept at the next start).
    """
    settings, store = request.app[SETTINGS], request.app[STORE]
    limit = settings.max_upload_bytes
    if request.content_length is not None and request.content_length > limit + MULTIPART_OVERHEAD:
        raise too_large(limit, "The file", "TRAINER_MAX_UPLOAD_BYTES")
    if not request.content_type.startswith("multipart/"):
        raise ApiError(400, "Uploads must be multipart/form-data with 'purpose' and 'file'.")
    reader = await request.multipart()
    purpose: str | None = None
    file_id = new_id("file")
    path = settings.data_dir / "files" / file_id
    partial = path.with_name(path.name + PARTIAL_SUFFIX)
    path.parent.mkdir(parents=True, exist_ok=True)
    filename, size = None, 0
    try:
        while (next_part := await reader.next()) is not None:
            # A nested multipart part (a MultipartReader) has no name: it fails on .name below, as it always has.
            part = cast(BodyPartReader, next_part)
            if part.name == "purpose":
                purpose = (await _small_part(part)).strip()
            elif part.name == "file":
                filename = part.filename or "upload"
                with partial.open("wb") as out:
                    while chunk := await part.read_chunk():
                        size += len(chunk)
                        if size > limit:
                            raise too_large(limit, "The file", "TRAINER_MAX_UPLOAD_BYTES")
                        out.write(chunk)
        if filename is None:
            raise ApiError(400, "Missing required parameter: 'file'.", param="file")
        if purpose not in FILE_PURPOSES:
            raise ApiError(400, f"Invalid value for purpose: {purpose!r}.", param="purpose")
        partial.rename(path)
        row = store.add_file(file_id, filename, purpose, size, path)
    except BaseException:  # refused, failed or the client went away mid-upload: keep no bytes
        partial.unlink(missing_ok=True)
        path.unlink(missing_ok=True)
        raise
    return web.json_response(file_object(row))


async def _small_part(part: Any) -> str:
    data = bytearray()
    while chunk := await part.read_chunk(MAX_PURPOSE_BYTES):
        data += chunk
        if len(data) > MAX_PURPOSE_BYTES:
            raise ApiError(400, "purpose is too long.", param="purpose")
    return data.decode("utf-8", "replace")


def _file(request: web.Request) -> sqlite3.Row:
    row = request.app[STORE].file(request.match_info["file_id"])
    if row is None:
        raise ApiError(404, f"No such File object: {request.match_info['file_id']}", param="id")
    return row


async def get_file(request: web.Request) -> web.Response:
    """GET /v1/files/{id}."""
    return web.json_response(file_object(_file(request)))


async def list_files(request: web.Request) -> web.Response:
    """GET /v1/files, newest first unless order=asc."""
    page = request.app[STORE].files(page_limit(request, 10000, 10000), request.query.get("after"),
                                    request.query.get("purpose"), page_order(request))
    return list_response(page, file_object)


async def delete_file(request: web.Request) -> web.Response:
    """DELETE /v1/files/{id}; refused while an unfinished job still needs the file."""
    row, store = _file(request), request.app[STORE]
    if store.file_in_use(row["id"]):
        raise ApiError(409, f"File {row['id']} is used by a job that has not finished yet.", param="id",
                       code="file_in_use")
    store.delete_file(row["id"])
    Path(row["path"]).unlink(missing_ok=True)
    return web.json_response({"id": row["id"], "object": "file", "deleted": True})


async def file_content(request: web.Request) -> web.StreamResponse:
    """GET /v1/files/{id}/content: the raw bytes."""
    row = _file(request)
    return web.FileResponse(row["path"], headers={"Content-Type": "application/octet-stream"})




ROUTES = [
    web.post("/v1/files", upload_file),
    web.get("/v1/files", list_files),
    web.get("/v1/files/{file_id}", get_file),
    web.delete("/v1/files/{file_id}", delete_file),
    web.get("/v1/files/{file_id}/content", file_content),
]
