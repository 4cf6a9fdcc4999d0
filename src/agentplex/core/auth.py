"""Who is calling: API keys (stored, or from the environment) and JWT bearer tokens."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import jwt

from agentplex.core import apikeys
from agentplex.core.clock import utcnow
from agentplex.db.engine import Database
from agentplex.settings import AuthSettings

log = logging.getLogger("agentplex.auth")

_CACHE_LIMIT = 10_000


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller."""

    env_id: str
    kind: Literal["api_key", "env_key", "jwt", "anonymous", "sandbox"]
    key_id: str | None
    subject: str  # what rate limits count against
    sandbox_id: str | None = None  # set for a sandbox's data-plane token
    expires: float | None = None  # epoch seconds after which the credential is void


class TokenVerifier(Protocol):
    """Another kind of bearer token the server accepts (e.g. sandbox data-plane tokens)."""

    async def verify(self, credential: str) -> Principal | None:
        """The caller the credential stands for, or None if it is not one of these tokens."""
        ...


class Authenticator:
    """Verifies credentials, caching verified keys for a short while."""

    def __init__(
        self, db: Database, settings: AuthSettings, verifiers: Sequence[TokenVerifier] = ()
    ) -> None:
        self._db = db
        self._settings = settings
        self._default_env_id = ""
        env_key = settings.api_key.get_secret_value() if settings.api_key else ""
        self._env_key_hash = apikeys.hash_key(env_key) if env_key else None
        self._jwt_key = _jwt_verification_key(settings)
        self._cache: dict[str, tuple[Principal | None, float]] = {}
        self._keys_exist: bool | None = None  # None until the first lookup has answered
        self._keys_checked_at = float("-inf")
        self._keys_lookup: asyncio.Future[bool] | None = None
        self._used: set[str] = set()
        self._inflight: dict[str, asyncio.Future[Principal | None]] = {}
        self._verifiers = list(verifiers)
        self.anonymous = Principal("", "anonymous", None, "anonymous")

    def set_default_env(self, env_id: str) -> None:
        """The environment of env-var keys, JWTs without an ``env_id`` and anonymous calls."""
        self._default_env_id = env_id
        self.anonymous = Principal(env_id, "anonymous", None, "anonymous")

    @property
    def configured_statically(self) -> bool:
        """Whether a key or JWT verifier comes from configuration (not the database)."""
        return self._env_key_hash is not None or self._jwt_key is not None

    async def required(self) -> bool:
        """Whether callers need a credential: yes once any key was ever created (revoked keys
        included, so revoking the last key never opens a server, nor does a restart), or when
        one is configured. No caller gets an answer before the first lookup has ended."""
        if self._keys_exist or self.configured_statically:
            return True  # for good: nothing turns authentication off again
        fresh = time.monotonic() - self._keys_checked_at <= max(self._settings.cache_seconds, 0.5)
        if self._keys_exist is not None and (fresh or self._keys_lookup is not None):
            return False  # no key yet; a refresh under way answers the calls after it
        if self._keys_lookup is None:
            self._keys_lookup = asyncio.ensure_future(self._lookup_keys())
        return await asyncio.shield(self._keys_lookup)

    async def _lookup_keys(self) -> bool:
        try:
            async with self._db.read() as conn:
                found = await apikeys.any_created(conn)
            self._keys_exist = self._keys_exist or found
            self._keys_checked_at = time.monotonic()
            return self._keys_exist
        finally:  # a failure reaches every waiter (an error, never an open door); retried next
            self._keys_lookup = None

    async def authenticate(self, credential: str) -> Principal | None:
        """The caller a credential stands for, or None if it is not valid."""
        if not credential:
            return None
        digest = apikeys.hash_key(credential)
        if self._env_key_hash is not None and hmac.compare_digest(digest, self._env_key_hash):
            return Principal(self._default_env_id, "env_key", None, "env:" + digest[:16])
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[1] > now:
            principal = cached[0]
        else:
            principal = await self._verify_once(credential, digest)
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            until = now + self._settings.cache_seconds
            if principal is not None and principal.expires is not None:
                # a credential that expires is trusted no longer than it lives
                until = min(until, now + principal.expires - time.time())
            self._cache[digest] = (principal, until)
        if principal is not None and principal.key_id is not None:
            self._used.add(principal.key_id)
        return principal

    async def _verify_once(self, credential: str, digest: str) -> Principal | None:
        """Concurrent requests with the same credential share one verification."""
        pending = self._inflight.get(digest)
        if pending is not None:
            return await asyncio.shield(pending)
        task = asyncio.ensure_future(self._verify(credential, digest))
        self._inflight[digest] = task
        try:
            return await asyncio.shield(task)
        finally:
            self._inflight.pop(digest, None)

    async def _verify(self, credential: str, digest: str) -> Principal | None:
        if self._jwt_key is not None and credential.count(".") == 2:
            return self._verify_jwt(credential)
        for verifier in self._verifiers:
            principal = await verifier.verify(credential)
            if principal is not None:
                return principal
        async with self._db.read() as conn:
            found = await apikeys.lookup(conn, digest)
        if found is None:
            return None
        key, stored = found
        if not hmac.compare_digest(stored, digest):
            return None
        return Principal(key.env_id, "api_key", key.id, "key:" + key.id)

    def _verify_jwt(self, token: str) -> Principal | None:
        assert self._jwt_key is not None
        try:
            claims = jwt.decode(
                token,
                self._jwt_key,
                algorithms=self._settings.jwt_algorithms,
                audience=self._settings.jwt_audience,
                issuer=self._settings.jwt_issuer,
                options={"verify_aud": self._settings.jwt_audience is not None},
            )
        except jwt.PyJWTError as exc:
            log.info("rejected a JWT: %s", exc)
            return None
        subject = str(claims.get("sub", "jwt"))
        env_id = str(claims.get("env_id") or self._default_env_id)
        exp = claims.get("exp")
        expires = float(exp) if isinstance(exp, int | float) else None
        return Principal(env_id, "jwt", None, "jwt:" + subject, expires=expires)

    def forget(self) -> None:
        """Drop cached verdicts (after a key is created or revoked in this process)."""
        self._cache.clear()
        self._keys_checked_at = float("-inf")

    async def flush_usage(self) -> None:
        """Write the last-used time of keys used since the previous flush."""
        if not self._used:
            return
        used, self._used = list(self._used), set()
        async with self._db.write() as conn:
            await apikeys.touch(conn, used, utcnow())


def _jwt_verification_key(settings: AuthSettings) -> str | None:
    if settings.jwt_public_key is not None:
        value = settings.jwt_public_key.get_secret_value().strip()
        if value and not value.startswith("-----BEGIN"):
            value = Path(value).expanduser().read_text()
        return value or None
    if settings.jwt_secret is not None:
        return settings.jwt_secret.get_secret_value() or None
    return None
