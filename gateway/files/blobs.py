"""Where an uploaded file's bytes live: the store's blob space (the in-memory store, or Redis: every replica reads
what one wrote), or a directory (a volume every replica mounts). Both are keyed by the gateway's own file id
(``file-`` and hex): no name a caller chose ever becomes a key or a path."""

import asyncio
import os
import re
from pathlib import Path
from typing import Protocol

from config import Settings
from gateway.store import Store

_ID = re.compile(r"^file-[0-9a-f]{24}$")


def _checked(file_id: str) -> str:
    if not _ID.match(file_id):  # our own ids only: a path or key built from anything else is a defect
        raise ValueError("not a file id")
    return file_id


class Blobs(Protocol):
    async def put(self, file_id: str, data: bytes) -> None: ...

    async def get(self, file_id: str) -> bytes | None: ...

    async def delete(self, file_id: str) -> None: ...


class StoreBlobs:
    """Blobs as store values (``file-blob:<id>``), never expiring and never evicted."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def put(self, file_id: str, data: bytes) -> None:
        await self.store.set(f"file-blob:{_checked(file_id)}", data)

    async def get(self, file_id: str) -> bytes | None:
        return await self.store.get(f"file-blob:{_checked(file_id)}")

    async def delete(self, file_id: str) -> None:
        await self.store.delete(f"file-blob:{_checked(file_id)}")


class DirectoryBlobs:
    """Blobs as files of one directory, written whole (a temporary name, then renamed: a reader never sees half
    a file); the disk work runs in a thread, off the event loop."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, file_id: str) -> Path:
        return self.directory / _checked(file_id)

    async def put(self, file_id: str, data: bytes) -> None:
        await asyncio.to_thread(self._write, self._path(file_id), data)

    async def get(self, file_id: str) -> bytes | None:
        return await asyncio.to_thread(self._read, self._path(file_id))

    async def delete(self, file_id: str) -> None:
        await asyncio.to_thread(self._path(file_id).unlink, missing_ok=True)

    def _write(self, path: Path, data: bytes) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + f".{os.getpid()}.part")
        partial.write_bytes(data)
        os.replace(partial, path)

    @staticmethod
    def _read(path: Path) -> bytes | None:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None


def open_blobs(settings: Settings, store: Store) -> Blobs:
    if settings.files_backend == "directory":
        assert settings.files_directory is not None  # the settings refuse a directory backend without one
        return DirectoryBlobs(settings.files_directory)
    return StoreBlobs(store)
