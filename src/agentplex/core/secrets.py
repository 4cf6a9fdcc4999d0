"""Project context variables (Hot's secrets), encrypted at rest.

Each value is sealed with AES-256-GCM under a key derived (HKDF-SHA256) from the server's
master key and the environment's id, with a random 96-bit nonce per write. The associated data
names the project and the variable, so a ciphertext copied to another row (another key,
another project) fails authentication instead of decrypting. Values leave this module only
through `SecretService.values`, for the runs that need them as environment variables: never in
an API answer, a log line or an error message.

The master key is 32 random bytes: ``AGENTPLEX_MASTER_KEY`` (base64), else
``<data_dir>/master.key``, created on first start readable by the server's user only.
"""

from __future__ import annotations

import base64
import binascii
import builtins
import contextlib
import enum
import hashlib
import hmac
import logging
import os
import re
import secrets
import stat
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import SecretStr
from sqlalchemy.exc import IntegrityError

from agentplex.core import projects
from agentplex.core.clock import aware, utcnow
from agentplex.db.engine import Database
from agentplex.db.records import projects as records
from agentplex.errors import (
    BadRequest,
    ContextVariableExists,
    ContextVariableNotFound,
    MasterKeyError,
    SecretUnreadable,
)

log = logging.getLogger("agentplex.secrets")

MASTER_KEY_FILE = "master.key"
MASTER_KEY_BYTES = 32
MAX_KEY_LENGTH = 128
MAX_VALUE_BYTES = 64 * 1024
MAX_DESCRIPTION_LENGTH = 1000
MAX_TOTAL_BYTES = 1024 * 1024
"""All of a project's values together: they become every run's environment variables, and
Linux refuses to start a program whose environment passes a few MiB (execve's E2BIG)."""
MAX_VARIABLES = 500
RESERVED_PREFIX = "AGENTPLEX_"

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HKDF_SALT = b"agentplex/context-variables/v1"
_NONCE_BYTES = 12


# -- the master key ----------------------------------------------------------------------------


class MasterKey:
    """The server's master key and the per-environment keys derived from it."""

    __slots__ = ("_ciphers", "_key", "source")

    def __init__(self, key: bytes, source: str = "memory") -> None:
        if len(key) != MASTER_KEY_BYTES:
            raise MasterKeyError(
                f"The master key from {source} is {len(key)} bytes; it must be"
                f" {MASTER_KEY_BYTES} random bytes"
            )
        self._key = bytes(key)
        self.source = source
        self._ciphers: dict[str, AESGCM] = {}

    def __repr__(self) -> str:
        return f"MasterKey(source={self.source!r}, fingerprint={self.fingerprint!r})"

    @classmethod
    def generate(cls) -> MasterKey:
        """A new random key (tests; a server loads or creates its own)."""
        return cls(secrets.token_bytes(MASTER_KEY_BYTES), "generated")

    @classmethod
    def from_base64(cls, text: str, source: str = "AGENTPLEX_MASTER_KEY") -> MasterKey:
        """The key from its base64 text (standard or URL-safe alphabet)."""
        cleaned = "".join(text.split())
        try:
            key = base64.b64decode(
                cleaned.replace("-", "+").replace("_", "/") + "=" * (-len(cleaned) % 4),
                validate=True,
            )
        except (binascii.Error, ValueError):
            raise MasterKeyError(
                f"{source} is not valid base64: set it to the base64 of {MASTER_KEY_BYTES}"
                " random bytes (for example the output of `openssl rand -base64 32`)"
            ) from None
        if len(key) != MASTER_KEY_BYTES:
            raise MasterKeyError(
                f"{source} decodes to {len(key)} bytes; it must be the base64 of"
                f" {MASTER_KEY_BYTES} random bytes (for example `openssl rand -base64 32`)"
            )
        return cls(key, source)

    @classmethod
    def load_or_create(cls, data_dir: Path, configured: SecretStr | str | None = None) -> MasterKey:
        """The configured key (``AGENTPLEX_MASTER_KEY``, base64) if there is one; else the
        key in ``<data_dir>/master.key``, created (mode 0600) if the file does not exist.
        MasterKeyError, saying what to fix, for a file that cannot be read, does not hold
        exactly 32 bytes, or that other users may read."""
        if isinstance(configured, SecretStr):
            configured = configured.get_secret_value()
        if configured and configured.strip():
            return cls.from_base64(configured)
        path = Path(data_dir) / MASTER_KEY_FILE
        try:
            return cls._read(path)
        except FileNotFoundError:
            pass
        cls._create(path)
        key = cls._read(path)
        log.info("created master key %s (fingerprint %s)", path, key.fingerprint)
        return key

    @classmethod
    def _read(cls, path: Path) -> MasterKey:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise MasterKeyError(
                f"Cannot read the master key {path}: {exc.strerror}. Give the server's user"
                " read access to it (mode 0600), or set AGENTPLEX_MASTER_KEY"
            ) from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise MasterKeyError(f"The master key {path} is not a regular file")
            if info.st_mode & 0o077:
                raise MasterKeyError(
                    f"The master key {path} has mode {stat.S_IMODE(info.st_mode):04o}, which"
                    f" lets other users read or change it: run `chmod 600 {path}` (and consider"
                    " the key exposed if others could read it)"
                )
            data = b""
            while len(data) <= MASTER_KEY_BYTES:
                chunk = os.read(fd, MASTER_KEY_BYTES + 1 - len(data))
                if not chunk:
                    break
                data += chunk
        except OSError as exc:
            raise MasterKeyError(f"Cannot read the master key {path}: {exc.strerror}") from None
        finally:
            os.close(fd)
        if len(data) != MASTER_KEY_BYTES:
            size = f"{len(data)} bytes" if len(data) <= MASTER_KEY_BYTES else "more bytes"
            raise MasterKeyError(
                f"The master key {path} holds {size}; it must hold exactly {MASTER_KEY_BYTES}"
                " random bytes. Restore the original file (the secrets stored with it cannot be"
                " read without it), or remove it only if no secrets were stored yet"
            )
        return cls(data, str(path))

    @staticmethod
    def _create(path: Path) -> None:
        """Write a new key to ``path`` unless a file is there already (another process may be
        creating one at the same moment: whoever links first wins, and both read that)."""
        temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, secrets.token_bytes(MASTER_KEY_BYTES))
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(temporary, path)
            except FileExistsError:
                pass
            except OSError:  # a file system without hard links: create it in place
                with contextlib.suppress(FileExistsError):
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                    try:
                        os.write(fd, secrets.token_bytes(MASTER_KEY_BYTES))
                        os.fsync(fd)
                    finally:
                        os.close(fd)
        except OSError as exc:
            raise MasterKeyError(
                f"Cannot create the master key {path}: {exc.strerror}. Make the data directory"
                " writable by the server's user, or set AGENTPLEX_MASTER_KEY"
            ) from None
        finally:
            with contextlib.suppress(OSError):
                os.unlink(temporary)

    @property
    def fingerprint(self) -> str:
        """A short public name of the key (to tell two keys apart in logs): 16 hex digits of
        an HMAC, which reveals nothing of the key."""
        return hmac.new(self._key, b"agentplex master key fingerprint", hashlib.sha256).hexdigest()[
            :16
        ]

    def _cipher(self, env_id: str) -> AESGCM:
        cipher = self._ciphers.get(env_id)
        if cipher is None:
            derived = HKDF(
                algorithm=hashes.SHA256(),
                length=32,
                salt=_HKDF_SALT,
                info=b"agentplex environment " + env_id.encode(),
            ).derive(self._key)
            cipher = self._ciphers[env_id] = AESGCM(derived)
        return cipher

    def seal(self, env_id: str, project_id: str, key: str, value: str) -> tuple[bytes, bytes]:
        """``value`` encrypted for this environment, project and key: (ciphertext, nonce)."""
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._cipher(env_id).encrypt(nonce, value.encode(), _aad(project_id, key))
        return sealed, nonce

    def unseal(
        self, env_id: str, project_id: str, key: str, ciphertext: bytes, nonce: bytes
    ) -> str:
        """The value `seal` encrypted; InvalidTag if the key, the environment, the project,
        the variable's name or the bytes are not those it was sealed with."""
        return self._cipher(env_id).decrypt(nonce, ciphertext, _aad(project_id, key)).decode()


def _aad(project_id: str, key: str) -> bytes:
    # a project id is a UUID and a key has no NUL: the encoding is unambiguous
    return b"agentplex/context-variable\x00" + project_id.encode() + b"\x00" + key.encode()


# -- context variables -------------------------------------------------------------------------


class _Unset(enum.Enum):
    UNSET = 0


UNSET = _Unset.UNSET


@dataclass(frozen=True, slots=True)
class ContextVariable:
    """What may be shown of a context variable: everything but its value."""

    project_id: str
    key: str
    description: str | None
    created_at: datetime
    updated_at: datetime


def _variable(row: dict[str, Any]) -> ContextVariable:
    return ContextVariable(
        project_id=str(row["project_id"]),
        key=str(row["key"]),
        description=row["description"],
        created_at=aware(row["created_at"]),
        updated_at=aware(row["updated_at"]),
    )


def check_key(key: Any) -> str:
    """``key`` if it can name a context variable (it becomes an environment variable of the
    project's runs); else BadRequest saying what to change."""
    if not isinstance(key, str) or not key:
        raise BadRequest("A context variable needs a key: a non-empty string")
    shown = repr(key[:MAX_KEY_LENGTH]) + ("..." if len(key) > MAX_KEY_LENGTH else "")
    if len(key) > MAX_KEY_LENGTH:
        raise BadRequest(
            f"Invalid context variable key {shown}: at most {MAX_KEY_LENGTH} characters"
        )
    if not _KEY.fullmatch(key):
        raise BadRequest(
            f"Invalid context variable key {shown}: it must be a valid environment variable"
            " name: letters, digits and '_', not starting with a digit (e.g. DATABASE_URL)"
        )
    if key.upper().startswith(RESERVED_PREFIX):
        raise BadRequest(
            f"Invalid context variable key {shown}: names starting with {RESERVED_PREFIX} are"
            " reserved for agentplex"
        )
    return key


def check_value(key: str, value: Any) -> str:
    """``value`` if it can be stored; else BadRequest. The message never quotes the value."""
    if not isinstance(value, str):
        raise BadRequest(f"The value of context variable {key} must be a string")
    try:
        size = len(value.encode())
    except UnicodeEncodeError:
        raise BadRequest(
            f"The value of context variable {key} is not valid Unicode (a lone surrogate)"
        ) from None
    if size > MAX_VALUE_BYTES:
        raise BadRequest(
            f"The value of context variable {key} is {size} bytes; at most {MAX_VALUE_BYTES}"
            " (64 KiB) are allowed"
        )
    if "\x00" in value:
        raise BadRequest(
            f"The value of context variable {key} contains a NUL character, which no"
            " environment variable can hold"
        )
    return value


def check_description(description: Any) -> str | None:
    if description is None:
        return None
    if not isinstance(description, str):
        raise BadRequest("A context variable's description must be a string")
    if len(description) > MAX_DESCRIPTION_LENGTH:
        raise BadRequest(
            f"A context variable's description is {len(description)} characters; at most"
            f" {MAX_DESCRIPTION_LENGTH}"
        )
    return description


async def _check_total(conn: Any, project: Any, key: str, value: str) -> None:
    """BadRequest when setting ``key`` to ``value`` would take the project past
    `MAX_VARIABLES` variables or `MAX_TOTAL_BYTES` of values."""
    others = [r for r in await records.all_secrets(conn, project.project_id) if r["key"] != key]
    if len(others) >= MAX_VARIABLES:
        raise BadRequest(
            f"Project {project.name} has {len(others)} context variables, the most allowed:"
            " delete one before adding another"
        )
    # a value's ciphertext is its UTF-8 bytes plus the 16-byte GCM tag
    total = sum(len(r["ciphertext"]) - 16 + len(r["key"]) + 2 for r in others)
    total += len(value.encode()) + len(key) + 2
    if total > MAX_TOTAL_BYTES:
        raise BadRequest(
            f"Context variable {key} would bring project {project.name}'s variables to"
            f" {total} bytes; at most {MAX_TOTAL_BYTES} (1 MiB) in all are allowed, since"
            " they are given to every run as environment variables"
        )


class SecretService:
    """A project's context variables: set, list (metadata only), delete, and the decrypted
    values for the project's runs."""

    def __init__(self, db: Database, master_key: MasterKey) -> None:
        self.db = db
        self.master_key = master_key

    async def list(
        self, env_id: str, project_ref: str, *, limit: int = 20, offset: int = 0
    ) -> tuple[builtins.list[ContextVariable], int]:
        """A page of the project's variables by key (never their values), and the total."""
        async with self.db.read() as conn:
            project = await projects.resolve(conn, env_id, project_ref)
            rows, total = await records.list_secrets(
                conn, project.project_id, limit=limit, offset=offset
            )
        return [_variable(r) for r in rows], total

    async def create(
        self, env_id: str, project_ref: str, key: str, value: str, description: str | None = None
    ) -> ContextVariable:
        """A new variable; ContextVariableExists if the project has one with this key."""
        key = check_key(key)
        value = check_value(key, value)
        description = check_description(description)
        now = utcnow()
        try:
            async with self.db.write() as conn:
                project = await projects.resolve(conn, env_id, project_ref)
                if await records.get_secret(conn, project.project_id, key) is not None:
                    raise _exists(key)
                await _check_total(conn, project, key, value)
                ciphertext, nonce = self.master_key.seal(env_id, project.project_id, key, value)
                row = {
                    "project_id": project.project_id,
                    "key": key,
                    "description": description,
                    "ciphertext": ciphertext,
                    "nonce": nonce,
                    "created_at": now,
                    "updated_at": now,
                }
                await records.insert_secret(conn, row)
        except IntegrityError:  # set at the same moment by another request (PostgreSQL)
            raise _exists(key) from None
        log.info("context variable %s of project %s created", key, project.name)
        return _variable(row)

    async def put(
        self,
        env_id: str,
        project_ref: str,
        key: str,
        *,
        value: str | None = None,
        description: str | _Unset | None = UNSET,
    ) -> tuple[ContextVariable, bool]:
        """Replace the variable's value and/or description (a description left UNSET is
        kept; None clears it), creating the variable if the project has none with this key
        (then ``value`` is required). The variable, and whether it was created."""
        key = check_key(key)
        if value is not None:
            value = check_value(key, value)
        if not isinstance(description, _Unset):
            description = check_description(description)
        now = utcnow()
        try:
            async with self.db.write() as conn:
                project = await projects.resolve(conn, env_id, project_ref)
                existing = await records.get_secret(conn, project.project_id, key)
                if existing is None and value is None:
                    raise ContextVariableNotFound(
                        f"Context variable {key} not found: send a value to create it"
                    )
                values: dict[str, Any] = {"updated_at": now}
                if value is not None:
                    await _check_total(conn, project, key, value)
                    ciphertext, nonce = self.master_key.seal(env_id, project.project_id, key, value)
                    values.update(ciphertext=ciphertext, nonce=nonce)
                if not isinstance(description, _Unset):
                    values["description"] = description
                if existing is None:
                    row = {
                        "project_id": project.project_id,
                        "key": key,
                        "description": None,
                        "created_at": now,
                        **values,
                    }
                    await records.insert_secret(conn, row)
                else:
                    await records.update_secret(conn, project.project_id, key, values)
                    row = {**existing, **values}
        except IntegrityError:
            raise _exists(key) from None
        created = existing is None
        log.info(
            "context variable %s of project %s %s",
            key,
            project.name,
            "created" if created else "updated",
        )
        return _variable(row), created

    async def delete(self, env_id: str, project_ref: str, key: str) -> None:
        async with self.db.write() as conn:
            project = await projects.resolve(conn, env_id, project_ref)
            if not await records.delete_secret(conn, project.project_id, key):
                raise ContextVariableNotFound()
        log.info("context variable %s of project %s deleted", key, project.name)

    async def values(self, env_id: str, project_id: str) -> dict[str, str]:
        """Every variable of the project, decrypted: the environment of its runs. Never put
        these in an answer, a log line or an error. SecretUnreadable if one cannot be
        decrypted (a different master key, or an altered row)."""
        async with self.db.read() as conn:
            project = await projects.resolve(conn, env_id, project_id)
            rows = await records.all_secrets(conn, project.project_id)
        out: dict[str, str] = {}
        for row in rows:
            try:
                out[row["key"]] = self.master_key.unseal(
                    env_id,
                    project.project_id,
                    row["key"],
                    bytes(row["ciphertext"]),
                    bytes(row["nonce"]),
                )
            except (InvalidTag, ValueError, UnicodeDecodeError):
                raise SecretUnreadable(
                    f"Context variable {row['key']} of project {project.name} cannot be"
                    f" decrypted with the master key in use (fingerprint"
                    f" {self.master_key.fingerprint}): it was written with another master key,"
                    " or its stored row was altered. Restore the master key the secrets were"
                    " written with (<data_dir>/master.key or AGENTPLEX_MASTER_KEY), or set the"
                    " variable again"
                ) from None
        return out


def _exists(key: str) -> ContextVariableExists:
    return ContextVariableExists(
        f"Context variable {key} exists already: PUT /v1/projects/{{project}}/context/{key}"
        " to change it"
    )
