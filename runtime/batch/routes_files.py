"""OpenAI's /v1/files: upload, list, retrieve, content, delete; each file belongs to the key that uploaded it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from botocore.exceptions import ClientError
from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi.responses import StreamingResponse
from pydantic import ValidationError

from runtime.batch.api_common import (
    ApiException,
    ApiState,
    Caller,
    ExpiresAfter,
    RoomForWork,
    existing_file,
    expiry_seconds,
    not_found,
)
from runtime.batch.models import METADATA_VALUE_CHARS, ApiError, FileList, FileObject
from runtime.batch.storage import file_key

router = APIRouter()
MISSING_OBJECT = frozenset({"NoSuchKey", "404", "NotFound"})


@router.post("/v1/files")
async def upload_file(
    state: ApiState,
    principal: Caller,
    _room: RoomForWork,
    file: Annotated[UploadFile, File()],
    purpose: Annotated[str, Form()],
    anchor: Annotated[str | None, Form(alias="expires_after[anchor]")] = None,
    seconds: Annotated[int | None, Form(alias="expires_after[seconds]")] = None,
) -> FileObject:
    settings = state.settings
    if purpose != "batch":
        raise ApiException(400, ApiError(message=f"purpose {purpose!r}: only 'batch' is accepted", param="purpose"))
    expires_after = None
    if anchor is not None or seconds is not None:
        try:
            expires_after = ExpiresAfter.model_validate({"anchor": anchor, "seconds": seconds})
        except ValidationError as exc:
            first = exc.errors()[0]
            param = f"expires_after[{first['loc'][0]}]"
            raise ApiException(400, ApiError(message=f"{param}: {first['msg']}", param=param)) from None
    retention = expiry_seconds(settings, expires_after, "expires_after")
    filename = file.filename or "input.jsonl"
    if len(filename) > METADATA_VALUE_CHARS:  # it is kept in Redis with the file object
        message = f"file: its name is {len(filename)} characters; at most {METADATA_VALUE_CHARS}"
        raise ApiException(400, ApiError(message=message, param="file"))
    size = file.size if file.size is not None else 0
    if size > settings.max_file_bytes:
        raise ApiException(
            400,
            ApiError(
                message=f"file is {size} bytes; the limit is {settings.max_file_bytes}",
                code="file_too_large",
                param="file",
            ),
        )
    file_id = f"file-{uuid.uuid4().hex}"
    await asyncio.to_thread(state.objects.upload, file_key(file_id), file.file)
    stored = await state.store.record_file(
        file_id,
        owner=principal.key_id,
        size=size,
        filename=filename,
        purpose="batch",
        retention_seconds=retention,
    )
    return stored.public()


@router.get("/v1/files")
async def list_files(
    state: ApiState,
    principal: Caller,
    purpose: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    order: Literal["asc", "desc"] = "desc",
    after: str | None = None,
) -> FileList:
    """The caller's files (an admin key: every tenant's), as OpenAI lists them."""
    owner = None if principal.admin else principal.key_id
    files, more = await state.store.list_files(
        owner=owner, purpose=purpose, limit=limit, newest_first=order == "desc", after=after
    )
    data = [f.public() for f in files]
    return FileList(
        data=data, first_id=data[0].id if data else None, last_id=data[-1].id if data else None, has_more=more
    )


@router.get("/v1/files/{file_id}")
async def get_file(state: ApiState, principal: Caller, file_id: str) -> FileObject:
    return await existing_file(state, file_id, principal)


@router.get("/v1/files/{file_id}/content")
async def file_content(state: ApiState, principal: Caller, file_id: str) -> StreamingResponse:
    await existing_file(state, file_id, principal)
    try:
        body = await asyncio.to_thread(state.objects.open, file_key(file_id))
    except ClientError as exc:  # expired meanwhile: the sweep (or the bucket's own rule) deleted it
        if exc.response.get("Error", {}).get("Code") in MISSING_OBJECT:
            raise not_found("file", file_id) from None
        raise
    return StreamingResponse(_iterate(body), media_type="application/jsonl")


@router.delete("/v1/files/{file_id}")
async def delete_file(state: ApiState, principal: Caller, file_id: str) -> dict[str, Any]:
    await existing_file(state, file_id, principal)
    await asyncio.to_thread(state.objects.delete, file_key(file_id))
    record = await state.store.get_file(file_id)
    await state.store.delete_file(file_id, record.owner if record else None)
    return {"id": file_id, "object": "file", "deleted": True}


def _iterate(body: Any) -> Iterator[bytes]:
    try:
        yield from body.iter_chunks(1024 * 1024)
    finally:
        body.close()
