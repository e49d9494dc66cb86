"""OpenAI's Files API on the caller's own collection (``gateway.files``): ``POST /v1/files`` (multipart ``file`` and
``purpose``), ``GET /v1/files`` (``purpose``, ``order``, ``after``, ``limit``), ``GET /v1/files/{file_id}``,
``GET /v1/files/{file_id}/content`` and ``DELETE /v1/files/{file_id}``. A collection is the API key's principal's
in its tenant: another caller's file answers 404. Errors in OpenAI's shape."""

import re
from typing import Annotated

from pydantic import Field, TypeAdapter, ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Message, Receive

from gateway.catalog import Principal
from gateway.errors import InvalidRequest, NotFound, PayloadTooLarge
from gateway.files import CollectionFull, Owner
from gateway.http import bearer_key, json_response
from gateway.logs import bounded
from gateway.runtime import Gateway

# OpenAI's purposes (https://platform.openai.com/docs/api-reference/files/create)
PURPOSES = frozenset({"assistants", "batch", "fine-tune", "vision", "user_data", "evals"})
FORM_OVERHEAD = 64 * 1024  # what a multipart body may hold besides the file: boundaries, part headers, purpose
_FILE_ID = re.compile(r"^file-[0-9a-f]{24}$")
_BAD_NAME = re.compile(r"[\x00-\x1f\x7f/\\]")
_LIMIT: TypeAdapter[int] = TypeAdapter(Annotated[int, Field(ge=1, le=10_000)])


def _owner(request: Request) -> tuple[Gateway, Owner]:
    gw: Gateway = request.app.state.gateway
    principal: Principal = gw.catalog.authenticate(bearer_key(dict(request.scope["headers"])))
    return gw, Owner(principal.tenant_id, principal.id)


def _capped(receive: Receive, limit: int) -> Receive:
    """``receive``, refusing (413) a body past ``limit`` bytes as it arrives: nothing larger is ever spooled."""
    size = 0

    async def capped() -> Message:
        nonlocal size
        message = await receive()
        size += len(message.get("body", b""))
        if size > limit:
            raise PayloadTooLarge(f"The upload exceeds the limit of {limit} bytes.")
        return message

    return capped


def _filename(upload: UploadFile) -> str:
    name = (upload.filename or "").strip()
    if not name or len(name) > 255 or name in (".", "..") or _BAD_NAME.search(name):
        raise InvalidRequest(
            "The file's name must be 1 to 255 characters, without '/', '\\' or control characters.", param="file"
        )
    return name


async def upload_file(request: Request) -> Response:
    gw, owner = _owner(request)
    limit = gw.settings.files_max_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit + FORM_OVERHEAD:
        raise PayloadTooLarge(f"The upload of {int(declared)} bytes exceeds the limit of {limit} bytes.")
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        raise InvalidRequest("The upload must be a multipart/form-data body with 'file' and 'purpose'.")
    limited = Request(request.scope, _capped(request.receive, limit + FORM_OVERHEAD))
    try:
        form = await limited.form(max_files=1, max_fields=8, max_part_size=4096)
    except HTTPException as exc:  # python-multipart refused the body's shape
        raise InvalidRequest(f"The multipart body could not be read: {bounded(str(exc.detail), 100)}") from None
    try:
        upload, purpose = form.get("file"), form.get("purpose")
        if not isinstance(upload, UploadFile):
            raise InvalidRequest("'file' is required: the file to upload, as a multipart file part.", param="file")
        if not isinstance(purpose, str) or purpose not in PURPOSES:
            shown = bounded(purpose, 100) if isinstance(purpose, str) else "(none)"
            raise InvalidRequest(
                f"'purpose' must be one of {', '.join(sorted(PURPOSES))}; got '{shown}'.", param="purpose"
            )
        name = _filename(upload)
        data = await upload.read()
        if len(data) > limit:
            raise PayloadTooLarge(f"The file of {len(data)} bytes exceeds the limit of {limit} bytes.")
        try:
            record = await gw.files.add(owner, name, purpose, data)
        except CollectionFull as exc:
            raise PayloadTooLarge(str(exc), code="file_storage_limit") from None
    finally:
        await form.close()
    return json_response(record)


def _no_such(file_id: str) -> NotFound:
    return NotFound(f"No such file: '{bounded(file_id, 100)}'.", param="file_id")


def _file(request: Request) -> tuple[Gateway, Owner, str]:
    """The caller's collection and the file id the path names (404 for what is not an id of ours)."""
    gw, owner = _owner(request)
    file_id: str = request.path_params["file_id"]
    if not _FILE_ID.match(file_id):
        raise _no_such(file_id)
    return gw, owner, file_id


async def list_files(request: Request) -> Response:
    gw, owner = _owner(request)
    query = request.query_params
    try:
        limit = _LIMIT.validate_python(query.get("limit", "10000"), strict=False)
    except ValidationError:
        raise InvalidRequest("'limit' must be an integer from 1 to 10000.", param="limit") from None
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequest("'order' must be 'asc' or 'desc'.", param="order")
    records = await gw.files.records(owner)
    if order == "asc":
        records.reverse()
    purpose = query.get("purpose")
    if purpose is not None:
        records = [r for r in records if r["purpose"] == purpose]
    after = query.get("after")
    if after is not None:
        ids = [r["id"] for r in records]
        records = records[ids.index(after) + 1 :] if after in ids else []
    page = records[:limit]
    return json_response(
        {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(records) > limit,
        }
    )


async def retrieve_file(request: Request) -> Response:
    gw, owner, file_id = _file(request)
    record = await gw.files.get(owner, file_id)
    if record is None:
        raise _no_such(file_id)
    return json_response(record)


async def file_content(request: Request) -> Response:
    gw, owner, file_id = _file(request)
    found = await gw.files.content(owner, file_id)
    if found is None:
        raise _no_such(file_id)
    _, data = found
    # always a download, never something a browser would render from our origin
    headers = {"content-disposition": f'attachment; filename="{file_id}"', "x-content-type-options": "nosniff"}
    return Response(data, 200, headers=headers, media_type="application/octet-stream")


async def delete_file(request: Request) -> Response:
    gw, owner, file_id = _file(request)
    if not await gw.files.delete(owner, file_id):
        raise _no_such(file_id)
    return json_response({"id": file_id, "object": "file", "deleted": True})


def routes(prefix: str) -> list[Route]:
    """The routes under ``prefix``: OpenAI's paths (``""``), and the native base (``/api-proxy``, whose errors
    are in the native shape, as every route under it)."""
    base = prefix + "/v1/files"
    return [
        Route(base, upload_file, methods=["POST"]),
        Route(base + "/", upload_file, methods=["POST"]),  # as the seed writes it
        Route(base, list_files, methods=["GET"]),
        Route(base + "/{file_id}", retrieve_file, methods=["GET"]),
        Route(base + "/{file_id}", delete_file, methods=["DELETE"]),
        Route(base + "/{file_id}/content", file_content, methods=["GET"]),
    ]
