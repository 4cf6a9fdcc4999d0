"""The blob store's adapters: files under the data directory, or a table of the database.

`LocalBlobStore` suits one server (and is the default on SQLite); `DatabaseBlobStore` is for
several API replicas sharing PostgreSQL, where a build uploaded through one replica must deploy
and download through another. `create_blob_store` picks one from ``server.blob_store``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import tempfile
from pathlib import Path

from agentplex.core.clock import utcnow
from agentplex.core.ports import BlobStore
from agentplex.db.engine import Database
from agentplex.db.records import builds as records
from agentplex.errors import BlobNotFound
from agentplex.settings import ServerSettings

_KEY = re.compile(r"^[a-z0-9][a-z0-9._-]*(/[a-z0-9][a-z0-9._-]*)*$")


def content_key(data: bytes, prefix: str = "sha256") -> str:
    """The content address of ``data``: ``<prefix>/<first 2 hex>/<sha256 hex>``."""
    digest = hashlib.sha256(data).hexdigest()
    return f"{prefix}/{digest[:2]}/{digest}"


def check_key(key: str) -> str:
    """``key`` if it is a valid blob key (no empty, hidden or ``..`` segment), else ValueError."""
    if len(key) > 200 or not _KEY.match(key):
        raise ValueError(f"invalid blob key {key!r}")
    return key


class LocalBlobStore(BlobStore):
    """Files under ``root``, written to a temporary file then renamed into place."""

    kind = "local"

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    async def put(self, key: str, data: bytes) -> None:
        await asyncio.to_thread(self._write, self._path(key), data)

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    async def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            raise BlobNotFound(
                f"Blob {key} is missing from the local blob store ({self.root}). With several "
                'API replicas, set server.blob_store = "database" so that they share one store.'
            ) from None

    async def exists(self, key: str) -> bool:
        return await asyncio.to_thread(self._path(key).is_file)

    async def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(self._path(key).unlink)


class DatabaseBlobStore(BlobStore):
    """Rows of the ``blobs`` table: every server on the same database sees the same blobs."""

    kind = "database"

    def __init__(self, db: Database) -> None:
        self.db = db

    async def put(self, key: str, data: bytes) -> None:
        async with self.db.write() as conn:
            await records.put_blob(conn, check_key(key), data, utcnow())

    async def get(self, key: str) -> bytes:
        async with self.db.read() as conn:
            data = await records.get_blob(conn, check_key(key))
        if data is None:
            raise BlobNotFound(f"Blob {key} is missing from the database blob store.")
        return data

    async def exists(self, key: str) -> bool:
        async with self.db.read() as conn:
            return await records.blob_exists(conn, check_key(key))

    async def delete(self, key: str) -> None:
        async with self.db.write() as conn:
            await records.delete_blob(conn, check_key(key))


def create_blob_store(settings: ServerSettings, db: Database) -> BlobStore:
    """The adapter ``settings.blob_store`` names (``auto``: the database one on PostgreSQL,
    files under ``<data_dir>/blobs`` on SQLite)."""
    choice = settings.blob_store
    if choice == "auto":
        choice = "local" if db.is_sqlite else "database"
    if choice == "database":
        return DatabaseBlobStore(db)
    return LocalBlobStore(settings.data_dir / "blobs")
