"""Build records on real SQLite and PostgreSQL: the migration matches tables.py, deploys keep
one deployed build per project and replace its entry points, project deletion cascades, and
the database blob store holds binary data exactly."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile

import sqlalchemy as sa

from agentplex.core.blobs import DatabaseBlobStore
from agentplex.core.builds import BuildService
from agentplex.core.projects import ProjectService
from agentplex.db.engine import Database
from agentplex.db.tables import builds, event_handlers, schedules

ENTRY = {"hello/tasks.py": "def run(e):\n    pass\n"}


def archive(manifest: dict[str, object]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, content in ENTRY.items():
            zf.writestr(name, content)
        zf.writestr("agentplex.json", json.dumps(manifest))
    return buffer.getvalue()


async def test_database_blobs_hold_any_bytes(db: Database) -> None:
    store = DatabaseBlobStore(db)
    data = bytes(range(256)) * 4096 + b"\x00"
    await store.put("builds/aa/bb", data)
    await store.put("builds/aa/bb", data)  # a second upload of the same content
    assert await store.get("builds/aa/bb") == data


async def test_deleting_a_project_deletes_the_blobs_only_it_used(db: Database, env_id: str) -> None:
    blobs = DatabaseBlobStore(db)
    projects = ProjectService(db, blobs)
    service = BuildService(db, blobs)
    await projects.create(env_id, "a")
    await projects.create(env_id, "b")
    shared = archive({"functions": ["hello.tasks:run"]})
    own = archive({"handlers": [{"event": "x", "function": "hello.tasks:run"}]})
    uploads = {}
    for project, data in (("a", shared), ("a", own), ("b", shared)):
        done = await service.upload(env_id, project, data, hashlib.sha256(data).hexdigest())
        uploads[(project, data)] = done.build.blob_key

    await projects.delete(env_id, "a")
    assert not await blobs.exists(uploads[("a", own)])
    assert await blobs.exists(uploads[("b", shared)])  # b's build has the same contents
    _, data = await service.download(
        env_id, "b", (await service.list_builds(env_id, "b"))[0][0].build_id
    )
    assert data == shared

    await projects.delete(env_id, "b")
    assert not await blobs.exists(uploads[("b", shared)])


async def test_deploys_replace_entry_points_and_deletion_cascades(
    db: Database, env_id: str
) -> None:
    project = await ProjectService(db).create(env_id, "p")
    service = BuildService(db, DatabaseBlobStore(db))

    async def upload_and_deploy(manifest: dict[str, object]) -> str:
        data = archive(manifest)
        result = await service.upload(env_id, "p", data, hashlib.sha256(data).hexdigest())
        await service.deploy(env_id, "p", result.build.build_id)
        return result.build.build_id

    first = await upload_and_deploy(
        {
            "handlers": [{"event": "a", "function": "hello.tasks:run"}],
            "schedules": [{"cron": "* * * * *", "function": "hello.tasks:run"}],
        }
    )
    second = await upload_and_deploy({"handlers": [{"event": "b", "function": "hello.tasks:run"}]})
    await service.deploy(env_id, "p", second)  # deploying again changes nothing
    async with db.read() as conn:
        flags = dict((await conn.execute(sa.select(builds.c.build_id, builds.c.deployed))).all())
        rows = (await conn.execute(sa.select(event_handlers))).mappings().all()
        assert (await conn.execute(sa.select(sa.func.count()).select_from(schedules))).scalar() == 0
    assert flags == {first: False, second: True}
    assert [(r["event_type"], r["build_id"]) for r in rows] == [("b", second)]

    await ProjectService(db).delete(env_id, project.project_id)
    async with db.read() as conn:
        for table in (builds, event_handlers, schedules):
            count = await conn.execute(sa.select(sa.func.count()).select_from(table))
            assert count.scalar() == 0
