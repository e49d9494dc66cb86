"""OpenAI's Files API on the caller's own collection (``POST /v1/files`` and the rest), driven with the openai SDK;
hostile uploads; the collection's limits, atomic across replicas on Redis; the directory backend."""

import asyncio
import uuid

import httpx
import openai
import pytest
from openai import AsyncOpenAI
from pydantic import ValidationError

from config import Settings
from tests.conftest import ADMIN_KEY, MEMBER_KEY, OTHER_KEY, catalogue


def _client(base: str, key: str = ADMIN_KEY) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=base + "/v1", api_key=key, max_retries=0)


async def test_the_openai_sdk_uploads_lists_reads_and_deletes_a_file(gateway):
    client = _client(gateway)
    created = await client.files.create(file=("notes.txt", b"alpha\nbeta\n"), purpose="user_data")
    assert created.id.startswith("file-") and created.object == "file"
    assert (created.filename, created.bytes, created.purpose, created.status) == (
        "notes.txt",
        11,
        "user_data",
        "processed",
    )
    assert (await client.files.retrieve(created.id)).model_dump() == created.model_dump()
    second = await client.files.create(file=("data.jsonl", b'{"a": 1}\n'), purpose="batch")
    listed = [f.id async for f in client.files.list()]
    assert set(listed) == {created.id, second.id}
    assert [f.id async for f in client.files.list(purpose="batch")] == [second.id]
    page = await client.files.list(limit=1, order="asc")
    assert len(page.data) == 1 and page.has_more
    content = await client.files.content(created.id)
    assert content.content == b"alpha\nbeta\n"
    assert content.response.headers["content-type"] == "application/octet-stream"
    assert content.response.headers["x-content-type-options"] == "nosniff"
    deleted = await client.files.delete(created.id)
    assert deleted.deleted and deleted.id == created.id
    with pytest.raises(openai.NotFoundError):
        await client.files.retrieve(created.id)
    assert [f.id async for f in client.files.list()] == [second.id]


async def test_a_collection_is_its_callers_own(gateway):
    mine = await _client(gateway).files.create(file=("mine.txt", b"secret"), purpose="user_data")
    for key in (MEMBER_KEY, OTHER_KEY):  # another principal of the tenant, and another tenant
        other = _client(gateway, key)
        assert [f.id async for f in other.files.list()] == []
        with pytest.raises(openai.NotFoundError):
            await other.files.retrieve(mine.id)
        with pytest.raises(openai.NotFoundError):
            await other.files.content(mine.id)
        with pytest.raises(openai.NotFoundError):
            await other.files.delete(mine.id)
    assert (await _client(gateway).files.content(mine.id)).content == b"secret"
    with pytest.raises(openai.AuthenticationError):
        await _client(gateway, "sk-nobody").files.list()


def _post(base: str, **kwargs) -> httpx.Response:
    headers = {"Authorization": f"Bearer {ADMIN_KEY}", **kwargs.pop("headers", {})}
    return httpx.post(base + "/v1/files", headers=headers, timeout=10, **kwargs)


def _raw(filename: bytes) -> bytes:
    """A multipart body with a filename as sent, byte for byte (clients escape what they dislike)."""
    return (
        b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nuser_data\r\n'
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="' + filename + b'"\r\n\r\nx\r\n--b--\r\n'
    )


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"files": {"file": ("a.txt", b"x")}}, "purpose"),
        ({"files": {"file": ("a.txt", b"x")}, "data": {"purpose": "x" * 5000}}, None),
        ({"files": {"file": ("a.txt", b"x")}, "data": {"purpose": "<script>" * 20}}, "purpose"),
        ({"files": {"other": ("a.txt", b"x")}, "data": {"purpose": "user_data", "file": "no file"}}, "file"),
        ({"data": {"purpose": "user_data", "file": "not multipart"}}, None),
        ({"files": {"file": ("../../etc/passwd", b"x")}, "data": {"purpose": "user_data"}}, "file"),
        ({"content": _raw(b"a\x01b.txt"), "headers": {"content-type": "multipart/form-data; boundary=b"}}, "file"),
        ({"content": _raw(b"a\\b.txt"), "headers": {"content-type": "multipart/form-data; boundary=b"}}, "file"),
        ({"files": {"file": ("", b"x")}, "data": {"purpose": "user_data"}}, "file"),
        ({"json": {"file": "x", "purpose": "user_data"}}, None),
        ({"content": b"--b\r\nnot multipart", "headers": {"content-type": "multipart/form-data; boundary=b"}}, None),
    ],
)
def test_a_malformed_upload_is_a_clear_400_and_keeps_nothing(gateway, kwargs, param):
    answer = _post(gateway, **kwargs)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error" and len(error["message"]) < 400
    if param is not None:
        assert error["param"] == param
    listed = httpx.get(gateway + "/v1/files", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).json()
    assert listed["data"] == []


def test_a_file_over_the_limit_is_413_whether_declared_or_streamed(start_gateway, upstream):
    base = start_gateway(catalogue(upstream[1]), files_max_bytes=1000)
    too_big = _post(base, files={"file": ("big.bin", b"x" * 1001)}, data={"purpose": "user_data"})
    assert too_big.status_code == 413 and "1000 bytes" in too_big.json()["error"]["message"]

    def chunks():  # no Content-Length: the limit holds as the body arrives
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.bin"\r\n\r\n'
        for _ in range(200):
            yield b"x" * 1000

    streamed = _post(base, content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
    assert streamed.status_code == 413
    assert _post(base, files={"file": ("ok.bin", b"x" * 1000)}, data={"purpose": "user_data"}).status_code == 200


def test_unknown_ids_and_bad_queries_answer_in_openai_shape(gateway):
    auth = {"Authorization": f"Bearer {ADMIN_KEY}"}
    for path in ("/v1/files/file-" + "0" * 24, "/v1/files/" + "x" * 5000, "/v1/files/file-0/content"):
        answer = httpx.get(gateway + path, headers=auth)
        assert answer.status_code == 404 and len(answer.json()["error"]["message"]) < 200
    assert httpx.delete(gateway + "/v1/files/nope", headers=auth).status_code == 404
    for query in ("limit=0", "limit=abc", "limit=10001", "order=sideways"):
        answer = httpx.get(gateway + "/v1/files?" + query, headers=auth)
        assert answer.status_code == 400 and answer.json()["error"]["type"] == "invalid_request_error"


async def test_the_collections_limits_refuse_and_give_back_on_delete(start_gateway, upstream):
    base = start_gateway(catalogue(upstream[1]), files_collection_max_files=2, files_collection_max_bytes=100)
    client = _client(base)
    first = await client.files.create(file=("a.txt", b"x" * 40), purpose="user_data")
    await client.files.create(file=("b.txt", b"x" * 40), purpose="user_data")
    with pytest.raises(openai.APIStatusError) as full:
        await client.files.create(file=("c.txt", b"x"), purpose="user_data")
    assert full.value.status_code == 413 and full.value.code == "file_storage_limit"
    assert "2 files" in full.value.message
    await client.files.delete(first.id)
    with pytest.raises(openai.APIStatusError) as heavy:  # 40 + 61 bytes would pass the collection's 100
        await client.files.create(file=("c.txt", b"x" * 61), purpose="user_data")
    assert heavy.value.status_code == 413 and "100 bytes" in heavy.value.message
    await client.files.create(file=("c.txt", b"x" * 60), purpose="user_data")
    # another caller's collection has limits of its own
    await _client(base, MEMBER_KEY).files.create(file=("m.txt", b"x" * 60), purpose="user_data")


async def test_concurrent_uploads_on_two_replicas_never_overshoot_the_limit(start_gateway, upstream, redis_url):
    prefix = f"gwtest:{uuid.uuid4().hex}:"
    cat = catalogue(upstream[1])
    settings = {"redis_url": redis_url, "redis_prefix": prefix, "files_collection_max_files": 3}
    replicas = [start_gateway(cat, **settings) for _ in range(2)]

    async def upload(i: int) -> int:
        try:
            await _client(replicas[i % 2]).files.create(file=(f"f{i}.txt", b"x" * 10), purpose="user_data")
            return 200
        except openai.APIStatusError as exc:
            return exc.status_code

    statuses = await asyncio.gather(*(upload(i) for i in range(12)))
    assert sorted(statuses) == [200] * 3 + [413] * 9
    for base in replicas:  # every replica sees the same three, and reads their bytes
        listed = [f async for f in _client(base).files.list()]
        assert len(listed) == 3
        assert (await _client(base).files.content(listed[0].id)).content == b"x" * 10


async def test_the_directory_backend_keeps_the_bytes_under_the_files_id(start_gateway, upstream, tmp_path):
    blobs = tmp_path / "blobs"
    base = start_gateway(catalogue(upstream[1]), files_backend="directory", files_directory=blobs)
    client = _client(base)
    created = await client.files.create(file=("n.txt", b"on disk"), purpose="user_data")
    assert [p.name for p in blobs.iterdir()] == [created.id]
    assert (await client.files.content(created.id)).content == b"on disk"
    await client.files.delete(created.id)
    assert list(blobs.iterdir()) == []


def test_the_directory_backend_needs_its_directory():
    with pytest.raises(ValidationError, match="files_directory"):
        Settings(files_backend="directory")


def test_the_native_base_serves_the_same_collection_with_native_errors(gateway):
    auth = {"Authorization": f"Bearer {ADMIN_KEY}"}
    up = httpx.post(
        gateway + "/api-proxy/v1/files/", headers=auth, files={"file": ("n.txt", b"hi")}, data={"purpose": "user_data"}
    )
    assert up.status_code == 200, up.text
    file_id = up.json()["id"]
    assert [f["id"] for f in httpx.get(gateway + "/v1/files", headers=auth).json()["data"]] == [file_id]
    assert httpx.get(f"{gateway}/api-proxy/v1/files/{file_id}/content", headers=auth).content == b"hi"
    bad = httpx.post(gateway + "/api-proxy/v1/files", headers=auth, files={"file": ("n.txt", b"hi")})
    assert bad.status_code == 422 and bad.json()["detail"][0]["msg"].startswith("'purpose' must be")
    assert httpx.get(gateway + "/api-proxy/v1/files/nope", headers=auth).json() == {"detail": "No such file: 'nope'."}
