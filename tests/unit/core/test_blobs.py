"""The blob store's adapters: the local directory one and the database one (SQLite here; the
integration tests run it on PostgreSQL)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agentplex.core.blobs import (
    DatabaseBlobStore,
    LocalBlobStore,
    check_key,
    content_key,
    create_blob_store,
)
from agentplex.core.ports import BlobStore
from agentplex.db import migrate
from agentplex.db.engine import Database
from agentplex.errors import BlobNotFound
from agentplex.settings import ServerSettings


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'blobs.db'}")
    await migrate.upgrade(database)
    yield database
    await database.dispose()


@pytest.fixture(params=["local", "database"])
def store(request: pytest.FixtureRequest, tmp_path: Path, db: Database) -> BlobStore:
    if request.param == "local":
        return LocalBlobStore(tmp_path / "blobs")
    return DatabaseBlobStore(db)


async def test_put_get_exists_delete(store: BlobStore) -> None:
    data = bytes(range(256)) * 1000
    key = content_key(data, "builds")
    assert key.startswith("builds/") and key.endswith(content_key(data).split("/")[-1])
    assert not await store.exists(key)
    await store.put(key, data)
    assert await store.exists(key)
    assert await store.get(key) == data
    await store.put(key, b"replaced")
    assert await store.get(key) == b"replaced"
    await store.delete(key)
    await store.delete(key)  # twice is fine
    assert not await store.exists(key)
    with pytest.raises(BlobNotFound):
        await store.get(key)


@pytest.mark.parametrize("key", ["", "../x", "a/../b", ".hidden", "a//b", "/abs", "A", "a b"])
async def test_keys_cannot_escape(store: BlobStore, key: str) -> None:
    with pytest.raises(ValueError, match="invalid blob key"):
        await store.put(key, b"x")
    with pytest.raises(ValueError):
        check_key(key)


async def test_local_writes_are_atomic_and_leave_no_temporary_files(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    datas = [bytes([i]) * 200_000 for i in range(8)]
    await asyncio.gather(*(store.put("k/one", d) for d in datas))
    assert await store.get("k/one") in datas  # one whole write, never a mix
    assert [p.name for p in (tmp_path / "blobs" / "k").iterdir()] == ["one"]


def test_the_setting_picks_the_adapter(tmp_path: Path, db: Database) -> None:
    def make(choice: str) -> BlobStore:
        return create_blob_store(ServerSettings(data_dir=tmp_path, blob_store=choice), db)

    assert isinstance(make("auto"), LocalBlobStore)  # SQLite: one server
    assert isinstance(make("database"), DatabaseBlobStore)
    local = make("local")
    assert isinstance(local, LocalBlobStore) and local.root == tmp_path / "blobs"
    pg = Database("postgresql+psycopg://nobody@127.0.0.1:1/none")
    assert isinstance(create_blob_store(ServerSettings(data_dir=tmp_path), pg), DatabaseBlobStore)
