"""Builds: a project's code as a zip archive, checked, stored in the blob store, and deployed.

Uploading checks the archive (a zip; no path outside it, no symlink, nothing encrypted; within
the size, file-count and compression-ratio limits of the settings), verifies the client's hash
and parses the manifest (`agentplex.core.manifest`), before anything is stored. When the
archive holds Python code and the service was given a ``discover`` callable (the run
executor's, which imports the code in a sandbox, never here), the entry points the code
declares with the SDK's decorators join the manifest's, and the merged manifest is stored.
Deploying makes the build the project's one deployed build and replaces the project's event
handlers and schedules with the ones its manifest declares, in one transaction; ``on_deployed``
then hears of it (with the build it replaced).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import re
import stat
import uuid
import zipfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from agentplex.core import projects
from agentplex.core.blobs import content_key
from agentplex.core.clock import aware, new_id, utcnow
from agentplex.core.manifest import MANIFEST_NAME, Manifest, parse_manifest
from agentplex.core.ports import BlobStore
from agentplex.db.engine import Database
from agentplex.db.records import builds as records
from agentplex.errors import BadRequest, BuildNotFound, Conflict, PayloadTooLarge
from agentplex.settings import ServerSettings

log = logging.getLogger("agentplex.builds")

BUILD_TYPE = "bundle"
_BIG = 1024 * 1024  # below this many extracted bytes the ratio is not looked at
_HASHES = {40: "sha1", 64: "sha256", 96: "sha384", 128: "sha512"}
_HEX = re.compile(r"^[0-9a-f]+$")


@dataclass(frozen=True, slots=True)
class ArchiveLimits:
    """How big a build archive may be."""

    max_bytes: int = 50 * 1024 * 1024
    max_files: int = 10_000
    max_unpacked_bytes: int = 256 * 1024 * 1024
    max_ratio: float = 200.0

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> ArchiveLimits:
        return cls(
            settings.build_max_bytes,
            settings.build_max_files,
            settings.build_max_unpacked_bytes,
            settings.build_max_ratio,
        )


@dataclass(frozen=True, slots=True)
class Archive:
    """A checked build archive: its regular files and its manifest."""

    files: frozenset[str]
    manifest: Manifest


def inspect_archive(data: bytes, limits: ArchiveLimits) -> Archive:
    """Check a build archive and parse its manifest; BadRequest (PayloadTooLarge for its size)
    saying what to fix. Reads every entry once (bounded by the limits) to verify its CRC."""
    if len(data) > limits.max_bytes:
        raise PayloadTooLarge(
            f"The build archive is {len(data)} bytes; the limit is {limits.max_bytes} "
            "(server.build_max_bytes). Leave out what the build does not need (virtualenvs, "
            "data files, .git)."
        )
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise BadRequest(f"The uploaded file is not a zip archive ({exc}): send a .zip") from None
    with archive:
        entries = archive.infolist()
        if len(entries) > limits.max_files:
            raise BadRequest(
                f"The build archive holds {len(entries)} entries; the limit is "
                f"{limits.max_files} (server.build_max_files)."
            )
        files: set[str] = set()
        unpacked = 0
        for entry in entries:
            name = _check_entry(entry)
            if name is None:
                continue
            if name in files:
                raise BadRequest(f"The build archive holds {name!r} twice: keep one.")
            files.add(name)
            unpacked += entry.file_size
        if unpacked > limits.max_unpacked_bytes:
            raise BadRequest(
                f"The build archive extracts to {unpacked} bytes; the limit is "
                f"{limits.max_unpacked_bytes} (server.build_max_unpacked_bytes)."
            )
        if unpacked > _BIG and unpacked / max(len(data), 1) > limits.max_ratio:
            raise BadRequest(
                f"The build archive extracts to {unpacked / max(len(data), 1):.0f} times its "
                f"size (limit {limits.max_ratio:g}, server.build_max_ratio): it looks like a zip "
                "bomb. Store highly repetitive files uncompressed or leave them out."
            )
        _verify_contents(archive, entries)
        raw = archive.read(MANIFEST_NAME) if MANIFEST_NAME in files else None
    manifest = parse_manifest(raw, files) if raw is not None else Manifest()
    return Archive(frozenset(files), manifest)


def _check_entry(entry: zipfile.ZipInfo) -> str | None:
    """The entry's path if it is a regular file, None for a directory; BadRequest for anything
    that could write outside the extraction directory or is not a plain file."""
    name = entry.filename
    parts = name.replace("\\", "/").split("/")
    if (
        name.startswith(("/", "\\"))
        or re.match(r"^[A-Za-z]:", name)
        or ".." in parts
        or "\\" in name
        or "\x00" in name
    ):
        raise BadRequest(
            f"The build archive entry {name!r} points outside the archive (absolute path, "
            "drive letter, backslash or '..'): use relative paths inside the project."
        )
    mode = entry.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise BadRequest(
            f"The build archive entry {name!r} is a symbolic link: archive the file it points "
            "to instead (zip without --symlinks)."
        )
    if entry.flag_bits & 0x1:
        raise BadRequest(f"The build archive entry {name!r} is encrypted: send it unencrypted.")
    if entry.is_dir():
        return None
    if stat.S_IFMT(mode) and not stat.S_ISREG(mode):  # a device, a FIFO, ...
        raise BadRequest(f"The build archive entry {name!r} is not a regular file.")
    return name


def _verify_contents(archive: zipfile.ZipFile, entries: list[zipfile.ZipInfo]) -> None:
    # zipfile stops each entry at its declared size and checks its CRC there, so this reads at
    # most the declared total, already within the limits
    for entry in entries:
        if entry.is_dir():
            continue
        try:
            with archive.open(entry) as file:
                while file.read(1 << 20):
                    pass
        except (zipfile.BadZipFile, EOFError, OSError, ValueError, NotImplementedError) as exc:
            raise BadRequest(
                f"The build archive entry {entry.filename!r} cannot be read ({exc}): "
                "create the zip again."
            ) from None


def verify_hash(data: bytes, claimed: str) -> str:
    """Check ``claimed`` (hex SHA-256, or SHA-1/384/512 by length, optionally prefixed
    ``sha256:``) against ``data``; the data's SHA-256 in hex. BadRequest on a mismatch."""
    text = claimed.strip().lower()
    algorithm: str | None = None
    if ":" in text:
        algorithm, _, text = text.partition(":")
        algorithm = algorithm.replace("-", "")
    expected = _HASHES.get(len(text))
    if not text or not _HEX.match(text) or expected is None or algorithm not in (None, expected):
        raise BadRequest(
            f"hash {claimed!r} is not a hex digest: send the SHA-256 of the file in hex "
            "(sha256sum build.zip), optionally prefixed sha256:"
        )
    actual = hashlib.new(expected, data).hexdigest()
    if actual != text:
        raise BadRequest(
            f"hash mismatch: the file's {expected} is {actual}, the request said {text}. "
            "The upload was corrupted or the hash is of another file."
        )
    return actual if expected == "sha256" else hashlib.sha256(data).hexdigest()


def check_build_id(value: str) -> str:
    """``value`` as a canonical UUID string; BadRequest otherwise."""
    try:
        return str(uuid.UUID(value))
    except (ValueError, AttributeError, TypeError):
        raise BadRequest(f"build_id {value!r} is not a UUID") from None


@dataclass(frozen=True, slots=True)
class Build:
    """A stored build."""

    build_id: str
    env_id: str
    project_id: str
    project_name: str
    hash: str
    size: int
    build_type: str
    blob_key: str
    storage_backend: str
    deployed: bool
    live: bool
    active: bool
    manifest: Manifest
    deployed_at: datetime | None
    created_at: datetime
    updated_at: datetime

    @property
    def storage_path(self) -> str:
        """Where the archive is, as ``<backend>://<key>``."""
        return f"{self.storage_backend}://{self.blob_key}"


def _build(row: dict[str, Any]) -> Build:
    return Build(
        build_id=row["build_id"],
        env_id=row["env_id"],
        project_id=row["project_id"],
        project_name=row["project_name"],
        hash=row["hash"],
        size=int(row["size"]),
        build_type=row["build_type"],
        blob_key=row["blob_key"],
        storage_backend=row["storage_backend"],
        deployed=bool(row["deployed"]),
        live=bool(row["live"]),
        active=bool(row["active"]),
        manifest=Manifest.from_json(row["manifest"]),
        deployed_at=aware(row["deployed_at"]) if row["deployed_at"] else None,
        created_at=aware(row["created_at"]),
        updated_at=aware(row["updated_at"]),
    )


@dataclass(frozen=True, slots=True)
class Upload:
    """What an upload did: the build, and whether it existed already (same ``build_id``)."""

    build: Build
    existed: bool


EntryKind = Literal["event_handlers", "schedules"]
Discover = Callable[[bytes], Awaitable[Manifest]]
"""Reads the entry points an archive's code declares (`RunExecutor.discover`)."""
OnDeployed = Callable[[Build, str | None], Awaitable[None]]
"""Told of a deploy: the build deployed now, and the id of the one it replaced (if any)."""


def merge_manifests(declared: Manifest, discovered: Manifest) -> Manifest:
    """The manifest's entry points, then the code's that the manifest does not repeat."""

    def union(first: tuple[Any, ...], second: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(dict.fromkeys((*first, *second)))

    return Manifest(
        handlers=union(declared.handlers, discovered.handlers),
        schedules=union(declared.schedules, discovered.schedules),
        functions=union(declared.functions, discovered.functions),
        timeouts={**discovered.timeouts, **declared.timeouts},
    )


class BuildService:
    """Upload, read, download and deploy an environment's builds."""

    def __init__(
        self,
        db: Database,
        blobs: BlobStore,
        limits: ArchiveLimits | None = None,
        *,
        discover: Discover | None = None,
        on_deployed: OnDeployed | None = None,
    ):
        self.db = db
        self.blobs = blobs
        self.limits = limits or ArchiveLimits()
        self.discover = discover
        self.on_deployed = on_deployed

    async def upload(
        self,
        env_id: str,
        project_ref: str,
        data: bytes,
        claimed_hash: str,
        *,
        build_id: str | None = None,
        live: bool = False,
    ) -> Upload:
        """Check, store and record a build. The same ``build_id`` again returns the stored
        build (``existed``) if its hash is the same, Conflict otherwise."""
        build_id = check_build_id(build_id) if build_id else new_id()
        async with self.db.read() as conn:
            project = await projects.resolve(conn, env_id, project_ref)
            row = await records.get(conn, build_id)
        digest = verify_hash(data, claimed_hash)
        if row is not None:
            return Upload(self._same(row, env_id, project.project_id, data), existed=True)
        archive = await asyncio.to_thread(inspect_archive, data, self.limits)
        manifest = archive.manifest
        if self.discover is not None and any(name.endswith(".py") for name in archive.files):
            manifest = merge_manifests(manifest, await self.discover(data))
        key = content_key(data, "builds")
        if not await self.blobs.exists(key):
            await self.blobs.put(key, data)
        now = utcnow()
        async with self.db.write() as conn:
            project = await projects.resolve(conn, env_id, project_ref)  # not deleted meanwhile
            inserted = await records.insert(
                conn,
                {
                    "build_id": build_id,
                    "env_id": env_id,
                    "project_id": project.project_id,
                    "hash": digest,
                    "size": len(data),
                    "build_type": BUILD_TYPE,
                    "blob_key": key,
                    "storage_backend": self.blobs.kind,
                    "deployed": False,
                    "live": False,
                    "active": True,
                    "manifest": manifest.to_json(),
                    "deployed_at": None,
                    "created_at": now,
                    "updated_at": now,
                },
            )
            if inserted and live:
                await records.set_flag(conn, project.project_id, build_id, "live", now)
            row = await records.get(conn, build_id)
        assert row is not None
        if not inserted:  # the same build_id uploaded at the same moment
            return Upload(self._same(row, env_id, project.project_id, data), existed=True)
        log.info("build %s of project %s uploaded (%d bytes)", build_id, project.name, len(data))
        return Upload(_build(row), existed=False)

    @staticmethod
    def _same(row: dict[str, Any], env_id: str, project_id: str, data: bytes) -> Build:
        if row["env_id"] != env_id or row["project_id"] != project_id:
            raise Conflict(f"build_id {row['build_id']} is in use: choose another UUID")
        if row["hash"] != hashlib.sha256(data).hexdigest():
            raise Conflict(
                f"build {row['build_id']} exists with other contents (hash {row['hash']}): "
                "upload a new build under a new build_id"
            )
        return _build(row)

    async def get(self, env_id: str, project_ref: str, build_id: str) -> Build:
        """The project's build ``build_id``; BuildNotFound otherwise."""
        async with self.db.read() as conn:
            project = await projects.resolve(conn, env_id, project_ref)
            row = await records.get(conn, _as_uuid(build_id))
        if row is None or row["project_id"] != project.project_id:
            raise BuildNotFound(f"Build {build_id} not found in project {project.name}")
        return _build(row)

    async def current(
        self, env_id: str, project_ref: str, flag: Literal["deployed", "live"]
    ) -> Build:
        """The project's deployed (or live) build; BuildNotFound when it has none."""
        async with self.db.read() as conn:
            project = await projects.resolve(conn, env_id, project_ref)
            row = await records.flagged(conn, project.project_id, flag)
        if row is None:
            raise BuildNotFound(f"Project {project.name} has no {flag} build")
        return _build(row)

    async def list_builds(
        self, env_id: str, project_ref: str | None = None, *, limit: int = 20, offset: int = 0
    ) -> tuple[list[Build], int]:
        """Newest first: a page of the environment's builds (or one project's) and the total."""
        async with self.db.read() as conn:
            project_id = None
            if project_ref is not None:
                project_id = (await projects.resolve(conn, env_id, project_ref)).project_id
            rows, total = await records.page(conn, env_id, project_id, limit=limit, offset=offset)
        return [_build(r) for r in rows], total

    async def download(self, env_id: str, project_ref: str, build_id: str) -> tuple[Build, bytes]:
        """The build and its archive's bytes."""
        build = await self.get(env_id, project_ref, build_id)
        return build, await self.blobs.get(build.blob_key)

    async def deploy(self, env_id: str, project_ref: str, build_id: str) -> Build:
        """Make the build the project's deployed one and register its handlers and schedules
        in place of the previous deployed build's (one transaction)."""
        build = await self.get(env_id, project_ref, build_id)
        if not await self.blobs.exists(build.blob_key):  # stored on another replica's disk
            await self.blobs.get(build.blob_key)  # raises BlobNotFound, saying why
        now = utcnow()
        async with self.db.write() as conn:
            project = await projects.resolve(conn, env_id, project_ref)
            await records.lock_project(conn, project.project_id)
            row = await records.get(conn, build.build_id)
            if row is None or row["project_id"] != project.project_id:  # deleted meanwhile
                raise BuildNotFound(f"Build {build_id} not found in project {project.name}")
            manifest = Manifest.from_json(row["manifest"])
            before = await records.flagged(conn, project.project_id, "deployed")
            replaced = before["build_id"] if before is not None else None
            owner = {
                "env_id": env_id,
                "project_id": project.project_id,
                "build_id": build.build_id,
            }
            handlers = [
                {
                    **owner,
                    "event_handler_id": new_id(),
                    "event_type": h.event,
                    "ns": h.function.ns,
                    "var": h.function.var,
                    "function": h.function.target,
                    "created_at": now,
                }
                for h in manifest.handlers
            ]
            schedules = [
                {
                    **owner,
                    "schedule_id": new_id(),
                    "cron": s.cron,
                    "tz": s.tz,
                    "ns": s.function.ns,
                    "var": s.function.var,
                    "function": s.function.target,
                    "created_at": now,
                }
                for s in manifest.schedules
            ]
            await records.set_flag(conn, project.project_id, row["build_id"], "deployed", now)
            await records.replace_entry_points(conn, project.project_id, handlers, schedules)
            row = await records.get(conn, row["build_id"])
        assert row is not None
        log.info(
            "build %s of project %s deployed: %d handlers, %d schedules",
            row["build_id"],
            project.name,
            len(handlers),
            len(schedules),
        )
        deployed = _build(row)
        if self.on_deployed is not None:
            try:
                await self.on_deployed(deployed, replaced)
            except Exception:  # the deploy is committed; a listener's failure is not its own
                log.exception("after deploying build %s", deployed.build_id)
        return deployed

    async def archive(self, env_id: str, build_id: str) -> bytes:
        """The archive of the environment's build ``build_id`` (whatever its project)."""
        return await read_archive(self.db, self.blobs, env_id, build_id)

    async def entry_points(
        self, env_id: str, project_ref: str, kind: EntryKind, *, limit: int = 20, offset: int = 0
    ) -> tuple[list[dict[str, Any]], int]:
        """A page of the deployed build's event handlers or schedules (rows) and the total."""
        async with self.db.read() as conn:
            project = await projects.resolve(conn, env_id, project_ref)
            return await records.entry_points(
                conn, kind, project.project_id, limit=limit, offset=offset
            )


async def read_archive(db: Database, blobs: BlobStore, env_id: str, build_id: str) -> bytes:
    """The archive of the environment's build ``build_id``; BuildNotFound otherwise."""
    async with db.read() as conn:
        row = await records.get(conn, _as_uuid(build_id))
    if row is None or row["env_id"] != env_id:
        raise BuildNotFound(f"Build {build_id} not found")
    return await blobs.get(row["blob_key"])


def _as_uuid(build_id: str) -> str:
    """A build id as stored; a reference that is no UUID names no build."""
    try:
        return str(uuid.UUID(build_id))
    except ValueError:
        raise BuildNotFound(f"Build {build_id} not found: build ids are UUIDs") from None
