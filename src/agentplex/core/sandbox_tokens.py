"""Sandbox data-plane tokens: the ``auth_token`` a sandbox's creator (or a token refresh) gets.

A token opens only its own sandbox's data plane. Every issued token stays valid until its own
expiry, however many are issued after it: both Hopx SDKs refresh tokens freely (the JavaScript
one on every ``Sandbox.connect``) and keep using the one they held (COMPAT.md). Tokens are
stored as SHA-256 digests, compared in constant time, and deleted with their sandbox.
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncConnection

from agentplex.core import apikeys
from agentplex.core.auth import Principal
from agentplex.core.clock import aware, utcnow
from agentplex.db.engine import Database
from agentplex.db.records import sandboxes as records

TOKEN_PREFIX = "sbt_"  # noqa: S105 - a prefix, not a secret
_MEMO_LIMIT = 10_000


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A token as its holder gets it: shown once, only its digest is kept."""

    token: str
    expires_at: datetime


def principal_for(env_id: str, sandbox_id: str, expires_at: datetime) -> Principal:
    """Who a sandbox token's holder is: the sandbox, in its environment, until the expiry."""
    return Principal(
        env_id,
        "sandbox",
        None,
        "sandbox:" + sandbox_id,
        sandbox_id,
        expires=aware(expires_at).timestamp(),
    )


class SandboxTokens:
    """Issues and verifies sandbox tokens (a token verifier of the `Authenticator`)."""

    def __init__(self, db: Database, ttl_seconds: int) -> None:
        self.db = db
        self.ttl = timedelta(seconds=ttl_seconds)
        # digest -> principal of tokens this process issued: their first use costs no lookup
        self._issued: dict[str, Principal] = {}

    async def issue(
        self, env_id: str, sandbox_id: str, conn: AsyncConnection | None = None
    ) -> IssuedToken:
        """A new token for ``sandbox_id``; earlier ones stay valid until their own expiry.
        ``conn``: write it in that transaction (with the sandbox's own record)."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = utcnow()
        expires = now + self.ttl
        digest = apikeys.hash_key(token)
        row: dict[str, object] = {
            "token_hash": digest,
            "sandbox_id": sandbox_id,
            "env_id": env_id,
            "expires_at": expires,
            "created_at": now,
        }
        if conn is not None:
            await records.add_token(conn, row)
        else:
            async with self.db.write() as own:
                await records.add_token(own, row)
        if len(self._issued) >= _MEMO_LIMIT:
            self._issued.clear()
        self._issued[digest] = principal_for(env_id, sandbox_id, expires)
        return IssuedToken(token, expires)

    async def verify(self, credential: str) -> Principal | None:
        """The sandbox a token opens, or None (not a sandbox token, unknown, or expired)."""
        if not credential.startswith(TOKEN_PREFIX):
            return None
        digest = apikeys.hash_key(credential)
        principal = self._issued.get(digest)
        if principal is None:
            async with self.db.read() as conn:
                row = await records.token(conn, digest)
            if row is None or not hmac.compare_digest(str(row["token_hash"]), digest):
                return None
            principal = principal_for(row["env_id"], row["sandbox_id"], row["expires_at"])
        if principal.expires is not None and principal.expires <= time.time():
            self._issued.pop(digest, None)
            return None
        return principal

    def forget(self, sandbox_id: str) -> None:
        """Drop what this process remembers of a deleted sandbox's tokens."""
        for digest in [d for d, p in self._issued.items() if p.sandbox_id == sandbox_id]:
            del self._issued[digest]

    async def prune(self) -> int:
        """Delete expired tokens from the database; how many went."""
        now = utcnow()
        for digest in [d for d, p in self._issued.items() if (p.expires or 0) <= now.timestamp()]:
            del self._issued[digest]
        async with self.db.write() as conn:
            return await records.prune_tokens(conn, now)
