"""Hot projects: named units of deployable code in an environment.

A project is referred to by its id (a UUID) or its name (a slug). Names are never shaped like
a UUID, so a reference is unambiguously one or the other. This is the one place a reference
becomes a `Project`; builds and context variables resolve their project through here.
"""

from __future__ import annotations

import builtins
import logging
import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from agentplex.core.clock import aware, new_id, utcnow
from agentplex.core.ports import BlobStore
from agentplex.db.engine import Database
from agentplex.db.records import builds as build_records
from agentplex.db.records import projects as records
from agentplex.errors import BadRequest, ProjectExists, ProjectNotFound

log = logging.getLogger("agentplex.projects")

MAX_NAME_LENGTH = 100
_NAME = re.compile(r"^[A-Za-z0-9._-]{1,100}$")


@dataclass(frozen=True, slots=True)
class Project:
    project_id: str
    env_id: str
    name: str
    active: bool
    created_at: datetime
    updated_at: datetime


def _project(row: dict[str, Any]) -> Project:
    return Project(
        project_id=str(row["project_id"]),
        env_id=str(row["env_id"]),
        name=str(row["name"]),
        active=bool(row["active"]),
        created_at=aware(row["created_at"]),
        updated_at=aware(row["updated_at"]),
    )


def as_uuid(ref: str) -> str | None:
    """``ref`` in the canonical form of a UUID if it is one, else None."""
    try:
        return str(uuid.UUID(ref))
    except ValueError:
        return None


def check_name(name: Any) -> str:
    """``name`` if it can name a project; else BadRequest saying what to change."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        shown = repr(name[:MAX_NAME_LENGTH]) if isinstance(name, str) else "this"
        raise BadRequest(
            f"Invalid project name {shown}: use 1-{MAX_NAME_LENGTH} characters, each a letter,"
            " a digit, '-', '_' or '.'"
        )
    if name in (".", ".."):
        raise BadRequest(f"Invalid project name {name!r}: '.' and '..' are not names")
    if as_uuid(name) is not None:
        raise BadRequest(
            f"Invalid project name {name!r}: a name must not look like a UUID"
            " (project ids are UUIDs, and either may name the project in a URL)"
        )
    return name


async def find(conn: AsyncConnection, env_id: str, ref: str) -> Project | None:
    """The environment's project with id or name ``ref``, in the caller's transaction."""
    project_id = as_uuid(ref)
    if project_id is not None:
        row = await records.get_project(conn, env_id, project_id)
    else:
        row = await records.get_project_by_name(conn, env_id, ref)
    return _project(row) if row else None


async def resolve(conn: AsyncConnection, env_id: str, ref: str) -> Project:
    """Like `find`, but a missing project is ProjectNotFound."""
    project = await find(conn, env_id, ref)
    if project is None:
        raise ProjectNotFound()
    return project


class ProjectService:
    """Create, read, rename, (de)activate and delete an environment's projects."""

    def __init__(self, db: Database, blobs: BlobStore | None = None) -> None:
        self.db = db
        self.blobs = blobs  # a deleted project's build blobs go too, when given

    async def create(self, env_id: str, name: str) -> Project:
        name = check_name(name)
        now = utcnow()
        project = Project(new_id(), env_id, name, True, now, now)
        try:
            async with self.db.write() as conn:
                if await records.get_project_by_name(conn, env_id, name) is not None:
                    raise _exists(name)
                await records.insert_project(
                    conn,
                    {
                        "project_id": project.project_id,
                        "env_id": env_id,
                        "name": name,
                        "active": True,
                        "created_at": now,
                        "updated_at": now,
                    },
                )
        except IntegrityError:  # created at the same moment by another request (PostgreSQL)
            raise _exists(name) from None
        log.info("project %s (%s) created", name, project.project_id)
        return project

    async def get(self, env_id: str, ref: str) -> Project:
        """The project with id or name ``ref``; ProjectNotFound if the environment has none."""
        async with self.db.read() as conn:
            return await resolve(conn, env_id, ref)

    async def update(
        self, env_id: str, ref: str, *, name: str | None = None, active: bool | None = None
    ) -> Project:
        """Rename and/or (de)activate the project; the changed project."""
        if name is not None:
            name = check_name(name)
        try:
            async with self.db.write() as conn:
                project = await resolve(conn, env_id, ref)
                values: dict[str, Any] = {}
                if name is not None and name != project.name:
                    if await records.get_project_by_name(conn, env_id, name) is not None:
                        raise _exists(name)
                    values["name"] = name
                if active is not None and active != project.active:
                    values["active"] = active
                if not values:
                    return project
                values["updated_at"] = utcnow()
                await records.update_project(conn, project.project_id, values)
        except IntegrityError:
            raise _exists(name or "") from None
        updated = Project(
            project.project_id,
            env_id,
            values.get("name", project.name),
            values.get("active", project.active),
            project.created_at,
            values["updated_at"],
        )
        if "name" in values:
            log.info("project %s renamed %s", project.project_id, updated.name)
        return updated

    async def activate(self, env_id: str, ref: str) -> Project:
        return await self.update(env_id, ref, active=True)

    async def deactivate(self, env_id: str, ref: str) -> Project:
        return await self.update(env_id, ref, active=False)

    async def delete(self, env_id: str, ref: str) -> Project:
        """Delete the project and everything stored under it (its context variables, and
        whatever else references it with a cascading foreign key); the deleted project."""
        async with self.db.write() as conn:
            project = await resolve(conn, env_id, ref)
            keys = await build_records.blob_keys_of_project(conn, project.project_id)
            await records.delete_project(conn, project.project_id)
        log.info("project %s (%s) deleted", project.name, project.project_id)
        if self.blobs is not None and keys:
            await self._delete_blobs(keys)
        return project

    async def _delete_blobs(self, keys: set[str]) -> None:
        """Delete the blobs no build uses any more. A build uploaded meanwhile with the same
        contents can lose its blob in the window between the check and the delete; its
        download then says the blob is missing, and uploading it again restores it."""
        async with self.db.read() as conn:
            unused = await build_records.unused_blob_keys(conn, sorted(keys))
        for key in sorted(unused):
            try:
                await self.blobs.delete(key)  # type: ignore[union-attr]
            except Exception:  # the project is gone either way; the blob is only space
                log.exception("could not delete build blob %s", key)

    async def list(
        self, env_id: str, *, limit: int = 20, offset: int = 0
    ) -> tuple[builtins.list[Project], int]:
        """A page of the environment's projects, by name, and how many there are in all."""
        async with self.db.read() as conn:
            rows, total = await records.list_projects(conn, env_id, limit=limit, offset=offset)
        return [_project(r) for r in rows], total


def _exists(name: str) -> ProjectExists:
    return ProjectExists(
        f"A project named {name!r} exists already in this environment: choose another name"
    )
