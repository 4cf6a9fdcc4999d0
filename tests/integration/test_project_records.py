"""Projects and their context variables on real SQLite and PostgreSQL: the services' rules,
what cascades, and that a value is stored only as ciphertext (the database file never holds
it) and only opens with the master key it was written with."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from agentplex.core.projects import ProjectService
from agentplex.core.secrets import UNSET, MasterKey, SecretService
from agentplex.db.engine import Database
from agentplex.db.tables import environments as environments_table
from agentplex.db.tables import project_secrets, projects
from agentplex.errors import (
    BadRequest,
    ContextVariableExists,
    ContextVariableNotFound,
    ProjectExists,
    ProjectNotFound,
    SecretUnreadable,
)

PLAINTEXT = "pg-pass-7f3c9a1e-never-stored-in-clear"


@pytest.fixture
def key() -> MasterKey:
    return MasterKey.generate()


@pytest.fixture
def service(db: Database) -> ProjectService:
    return ProjectService(db)


@pytest.fixture
def secrets(db: Database, key: MasterKey) -> SecretService:
    return SecretService(db, key)


async def count(db: Database, table: sa.Table) -> int:
    async with db.read() as conn:
        return int((await conn.execute(sa.select(sa.func.count()).select_from(table))).scalar_one())


# -- projects ----------------------------------------------------------------------------------


async def test_a_project_is_found_by_id_and_by_name(service: ProjectService, env_id: str) -> None:
    made = await service.create(env_id, "my-project")
    assert made.active and made.env_id == env_id and made.created_at == made.updated_at
    assert uuid.UUID(made.project_id).version == 4
    assert await service.get(env_id, made.project_id) == made
    assert await service.get(env_id, "my-project") == made
    assert await service.get(env_id, made.project_id.upper()) == made
    with pytest.raises(ProjectNotFound, match="Project not found"):
        await service.get(env_id, "My-Project")  # names are exact
    with pytest.raises(ProjectNotFound):
        await service.get(env_id, str(uuid.uuid4()))


async def test_projects_are_invisible_from_another_environment(
    service: ProjectService, env_id: str, other_env_id: str
) -> None:
    made = await service.create(env_id, "shared-name")
    for ref in (made.project_id, "shared-name"):
        with pytest.raises(ProjectNotFound):
            await service.get(other_env_id, ref)
        with pytest.raises(ProjectNotFound):
            await service.delete(other_env_id, ref)
    assert await service.list(other_env_id) == ([], 0)
    # the same name in another environment is another project
    theirs = await service.create(other_env_id, "shared-name")
    assert theirs.project_id != made.project_id


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("", "1-100 characters"),
        ("a" * 101, "1-100 characters"),
        ("has space", "1-100 characters"),
        ("slash/name", "1-100 characters"),
        ("émoji", "1-100 characters"),
        ("..", "not names"),
        ("550e8400-e29b-41d4-a716-446655440000", "UUID"),
        ("550E8400E29B41D4A716446655440000", "UUID"),
    ],
)
async def test_bad_names_are_refused_saying_what_to_fix(
    service: ProjectService, env_id: str, name: str, says: str
) -> None:
    with pytest.raises(BadRequest, match=says):
        await service.create(env_id, name)
    assert await service.list(env_id) == ([], 0)


async def test_names_are_unique_per_environment(service: ProjectService, env_id: str) -> None:
    await service.create(env_id, "a.b_c-1")
    with pytest.raises(ProjectExists, match="exists already"):
        await service.create(env_id, "a.b_c-1")
    other = await service.create(env_id, "other")
    with pytest.raises(ProjectExists):
        await service.update(env_id, "other", name="a.b_c-1")
    assert (await service.get(env_id, other.project_id)).name == "other"


async def test_concurrent_creates_of_one_name_make_one_project(
    service: ProjectService, env_id: str
) -> None:
    outcomes = await asyncio.gather(
        *(service.create(env_id, "racy") for _ in range(8)), return_exceptions=True
    )
    made = [o for o in outcomes if not isinstance(o, BaseException)]
    assert len(made) == 1
    assert all(isinstance(o, ProjectExists) for o in outcomes if o not in made)


async def test_rename_activate_deactivate(service: ProjectService, env_id: str) -> None:
    made = await service.create(env_id, "before")
    renamed = await service.update(env_id, "before", name="after")
    assert renamed.name == "after" and renamed.project_id == made.project_id
    assert renamed.updated_at > made.updated_at and renamed.created_at == made.created_at
    assert await service.get(env_id, "after") == renamed
    with pytest.raises(ProjectNotFound):
        await service.get(env_id, "before")
    assert await service.update(env_id, "after") == renamed  # nothing to change
    assert await service.update(env_id, "after", name="after") == renamed
    off = await service.deactivate(env_id, made.project_id)
    assert not off.active and (await service.get(env_id, "after")).active is False
    on = await service.activate(env_id, "after")
    assert on.active and on.name == "after"


async def test_projects_list_by_name_in_pages(service: ProjectService, env_id: str) -> None:
    for name in ("charlie", "alpha", "delta", "bravo", "echo"):
        await service.create(env_id, name)

    async def names(**page: int) -> tuple[list[str], int]:
        items, total = await service.list(env_id, **page)
        return [p.name for p in items], total

    assert await names() == (["alpha", "bravo", "charlie", "delta", "echo"], 5)
    assert await names(limit=2) == (["alpha", "bravo"], 5)
    assert await names(limit=2, offset=2) == (["charlie", "delta"], 5)
    assert await names(limit=2, offset=4) == (["echo"], 5)
    assert await names(offset=9) == ([], 5)


async def test_deleting_a_project_deletes_its_context_variables(
    service: ProjectService, secrets: SecretService, db: Database, env_id: str
) -> None:
    gone = await service.create(env_id, "gone")
    kept = await service.create(env_id, "kept")
    await secrets.create(env_id, "gone", "A", "1")
    await secrets.create(env_id, "gone", "B", "2")
    await secrets.create(env_id, "kept", "A", "3")
    deleted = await service.delete(env_id, "gone")
    assert deleted.project_id == gone.project_id
    assert await count(db, project_secrets) == 1
    with pytest.raises(ProjectNotFound):
        await secrets.list(env_id, gone.project_id)
    assert await secrets.values(env_id, kept.project_id) == {"A": "3"}
    with pytest.raises(ProjectNotFound):
        await service.delete(env_id, "gone")


async def test_deleting_an_environment_deletes_its_projects(
    service: ProjectService, secrets: SecretService, db: Database, other_env_id: str
) -> None:
    await service.create(other_env_id, "p")
    await secrets.create(other_env_id, "p", "K", "v")
    async with db.write() as conn:
        await conn.execute(
            environments_table.delete().where(environments_table.c.id == other_env_id)
        )
    assert await count(db, projects) == 0
    assert await count(db, project_secrets) == 0


# -- context variables -------------------------------------------------------------------------


async def test_context_variables_round_trip_through_encryption(
    service: ProjectService, secrets: SecretService, env_id: str
) -> None:
    project = await service.create(env_id, "p")
    big = "é" * 32768  # 64 KiB of UTF-8
    made = await secrets.create(env_id, "p", "DATABASE_URL", PLAINTEXT, "Production database")
    assert (made.key, made.description, made.project_id) == (
        "DATABASE_URL",
        "Production database",
        project.project_id,
    )
    await secrets.create(env_id, project.project_id, "BIG", big)
    await secrets.create(env_id, "p", "EMPTY", "")
    assert await secrets.values(env_id, project.project_id) == {
        "BIG": big,
        "DATABASE_URL": PLAINTEXT,
        "EMPTY": "",
    }
    listed, total = await secrets.list(env_id, "p")
    assert total == 3 and [v.key for v in listed] == ["BIG", "DATABASE_URL", "EMPTY"]
    assert listed[1] == made
    page, total = await secrets.list(env_id, "p", limit=1, offset=1)
    assert [v.key for v in page] == ["DATABASE_URL"] and total == 3


async def test_put_replaces_value_and_description_and_creates_with_a_value(
    service: ProjectService, secrets: SecretService, env_id: str
) -> None:
    project = await service.create(env_id, "p")
    made = await secrets.create(env_id, "p", "TOKEN", "old", "first")
    updated, created = await secrets.put(env_id, "p", "TOKEN", value="new")
    assert not created and updated.description == "first"  # omitted: kept
    assert updated.created_at == made.created_at and updated.updated_at > made.updated_at
    assert await secrets.values(env_id, project.project_id) == {"TOKEN": "new"}
    described, _ = await secrets.put(env_id, "p", "TOKEN", description="second")
    assert described.description == "second"
    assert await secrets.values(env_id, project.project_id) == {"TOKEN": "new"}
    cleared, _ = await secrets.put(env_id, "p", "TOKEN", description=None)
    assert cleared.description is None
    fresh, created = await secrets.put(env_id, "p", "FRESH", value="v", description=UNSET)
    assert created and fresh.description is None
    with pytest.raises(ContextVariableNotFound, match="send a value"):
        await secrets.put(env_id, "p", "MISSING", description="no value")
    with pytest.raises(ContextVariableExists, match="PUT"):
        await secrets.create(env_id, "p", "TOKEN", "again")
    await secrets.delete(env_id, "p", "TOKEN")
    with pytest.raises(ContextVariableNotFound):
        await secrets.delete(env_id, "p", "TOKEN")
    assert await secrets.values(env_id, project.project_id) == {"FRESH": "v"}


async def test_context_variables_belong_to_their_environment(
    service: ProjectService, secrets: SecretService, env_id: str, other_env_id: str
) -> None:
    project = await service.create(env_id, "p")
    await secrets.create(env_id, "p", "K", "v")
    for call in (
        secrets.list(other_env_id, project.project_id),
        secrets.create(other_env_id, project.project_id, "X", "y"),
        secrets.put(other_env_id, project.project_id, "K", value="stolen"),
        secrets.delete(other_env_id, project.project_id, "K"),
        secrets.values(other_env_id, project.project_id),
    ):
        with pytest.raises(ProjectNotFound):
            await call
    assert await secrets.values(env_id, project.project_id) == {"K": "v"}


async def test_the_plaintext_is_not_in_the_database(
    service: ProjectService, secrets: SecretService, db: Database, env_id: str, tmp_path: Path
) -> None:
    project = await service.create(env_id, "p")
    await secrets.create(env_id, "p", "DATABASE_URL", PLAINTEXT)
    await secrets.put(env_id, "p", "OTHER", value=PLAINTEXT + "-2")
    async with db.read() as conn:
        rows = [dict(r._mapping) for r in await conn.execute(sa.select(project_secrets))]
    assert len(rows) == 2
    for row in rows:
        assert PLAINTEXT.encode() not in bytes(row["ciphertext"])
        assert PLAINTEXT not in repr(row)
        assert len(row["nonce"]) == 12
    if db.is_sqlite:
        await db.dispose()  # checkpoint nothing away: read the database and its WAL as they are
        files = list(tmp_path.glob("agentplex.db*"))
        assert files
        for file in files:
            raw = file.read_bytes()
            assert PLAINTEXT.encode() not in raw, file
            assert PLAINTEXT.encode("utf-16-le") not in raw, file
        assert any(b"DATABASE_URL" in f.read_bytes() for f in files)  # the key name is there
    else:
        async with db.read() as conn:
            dumped = await conn.execute(
                sa.text("SELECT CAST(ps.* AS text) FROM project_secrets ps")
            )
            text = "\n".join(str(r[0]) for r in dumped)
        assert "DATABASE_URL" in text and PLAINTEXT not in text
        assert PLAINTEXT.encode().hex() not in text
    assert await secrets.values(env_id, project.project_id) == {
        "DATABASE_URL": PLAINTEXT,
        "OTHER": PLAINTEXT + "-2",
    }


async def test_a_wrong_master_key_fails_cleanly(
    service: ProjectService, secrets: SecretService, db: Database, env_id: str
) -> None:
    project = await service.create(env_id, "p")
    await secrets.create(env_id, "p", "DATABASE_URL", PLAINTEXT, "db")
    wrong = SecretService(db, MasterKey.generate())
    # metadata needs no key: listing still works, and so do writes of new values
    listed, total = await wrong.list(env_id, "p")
    assert total == 1 and listed[0].key == "DATABASE_URL"
    with pytest.raises(SecretUnreadable) as caught:
        await wrong.values(env_id, project.project_id)
    message = caught.value.message
    assert "DATABASE_URL" in message and "master key" in message
    assert wrong.master_key.fingerprint in message
    assert PLAINTEXT not in message and PLAINTEXT not in repr(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    # the right key still reads it
    assert await secrets.values(env_id, project.project_id) == {"DATABASE_URL": PLAINTEXT}


async def test_a_ciphertext_moved_to_another_row_does_not_open(
    service: ProjectService, secrets: SecretService, db: Database, env_id: str
) -> None:
    a = await service.create(env_id, "a")
    b = await service.create(env_id, "b")
    await secrets.create(env_id, "a", "SOURCE", PLAINTEXT)
    await secrets.create(env_id, "a", "TARGET", "harmless")
    await secrets.create(env_id, "b", "SOURCE", "harmless")

    async def copy_sealed(to_project: str, to_key: str) -> None:
        async with db.write() as conn:
            row = (
                await conn.execute(
                    sa.select(project_secrets.c.ciphertext, project_secrets.c.nonce).where(
                        project_secrets.c.project_id == a.project_id,
                        project_secrets.c.key == "SOURCE",
                    )
                )
            ).one()
            await conn.execute(
                project_secrets.update()
                .where(project_secrets.c.project_id == to_project, project_secrets.c.key == to_key)
                .values(ciphertext=row.ciphertext, nonce=row.nonce)
            )

    await copy_sealed(a.project_id, "TARGET")  # another key of the same project
    with pytest.raises(SecretUnreadable, match="TARGET"):
        await secrets.values(env_id, a.project_id)
    await copy_sealed(b.project_id, "SOURCE")  # the same key of another project
    with pytest.raises(SecretUnreadable, match="SOURCE"):
        await secrets.values(env_id, b.project_id)


async def test_bad_keys_and_values_are_refused_before_anything_is_stored(
    service: ProjectService, secrets: SecretService, db: Database, env_id: str
) -> None:
    await service.create(env_id, "p")
    bad: list[tuple[str, Any, str]] = [
        ("1BAD", "v", "environment variable name"),
        ("AGENTPLEX_API_KEY", "v", "reserved"),
        ("K" * 129, "v", "at most 128"),
        ("GOOD", "x" * (64 * 1024 + 1), "64 KiB"),
        ("GOOD", "nul\x00" + PLAINTEXT, "NUL"),
    ]
    for key_name, value, says in bad:
        with pytest.raises(BadRequest, match=says) as caught:
            await secrets.create(env_id, "p", key_name, value)
        assert PLAINTEXT not in caught.value.message
        with pytest.raises(BadRequest, match=says):
            await secrets.put(env_id, "p", key_name, value=value)
    with pytest.raises(BadRequest, match="description"):
        await secrets.create(env_id, "p", "GOOD", "v", "d" * 1001)
    assert await count(db, project_secrets) == 0


async def test_a_projects_variables_are_capped_in_total_and_replacing_one_counts_once(
    service: ProjectService, secrets: SecretService, db: Database, env_id: str
) -> None:
    """Every run gets the variables as environment variables, which Linux caps at a few MiB
    (execve's E2BIG): together they may hold at most 1 MiB."""
    await service.create(env_id, "p")
    big = "v" * (60 * 1024)
    for i in range(17):  # 17 x 60 KiB: just under 1 MiB with the keys
        await secrets.create(env_id, "p", f"K{i}", big)
    await secrets.put(env_id, "p", "K0", value=big)  # a replacement is not counted twice
    with pytest.raises(BadRequest, match="1 MiB") as caught:
        await secrets.create(env_id, "p", "ONE_MORE", big)
    assert "ONE_MORE" in caught.value.message
    with pytest.raises(BadRequest, match="1 MiB"):
        await secrets.put(env_id, "p", "ONE_MORE", value=big)
    assert await count(db, project_secrets) == 17
    await secrets.create(env_id, "p", "SMALL", "ok")  # room is left for small ones


# -- schema ------------------------------------------------------------------------------------
