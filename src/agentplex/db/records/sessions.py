"""Queries of agent sessions and their messages; rows map to and from `core.session_model`.

A message is one row: its own columns for what queries filter and sort on (``role``,
``created``, ``completed``) and a JSON ``data`` holding the rest, its parts in order included.
Parts carry no ``session_id``/``message_id`` of their own in storage: they are their message's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import ColumnElement, RowMapping, Select, bindparam, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from agentplex.core.session_model import Message, ModelRef, Part, Session, Tokens
from agentplex.db.tables import session_messages, sessions

# Columns ``save_session`` leaves alone: what a session is and when it began.
_FIXED = frozenset({"id", "env_id", "created"})


# -- sessions ----------------------------------------------------------------------------------


async def insert_session(conn: AsyncConnection, s: Session) -> None:
    """Store a new session (raises `sqlalchemy.exc.IntegrityError` if its id is taken or its
    environment does not exist)."""
    await conn.execute(sessions.insert().values(**_session_values(s)))


async def save_session(conn: AsyncConnection, s: Session) -> None:
    """Write every mutable field of a stored session (all but id, env_id and created)."""
    values = {k: v for k, v in _session_values(s).items() if k not in _FIXED}
    await conn.execute(
        sessions.update()
        .where(sessions.c.id == s.id, sessions.c.env_id == s.env_id)
        .values(**values)
    )


async def get_session(conn: AsyncConnection, env_id: str, session_id: str) -> Session | None:
    """The session ``session_id`` if it belongs to environment ``env_id`` (any status)."""
    query = select(sessions).where(sessions.c.id == session_id, sessions.c.env_id == env_id)
    row = (await conn.execute(query)).first()
    return _session(row._mapping) if row else None


async def list_sessions(
    conn: AsyncConnection,
    env_id: str,
    *,
    statuses: Sequence[str] | None = None,
    channel: str | None = None,
    parent_id: str | None = None,
    roots: bool = False,
    search: str | None = None,
    limit: int | None = None,
    offset: int = 0,
) -> tuple[list[Session], int]:
    """One page of the environment's sessions, newest first (created, then id, descending),
    and how many match in all.

    ``statuses`` None means any status; ``roots`` keeps sessions without a parent; ``search``
    keeps titles containing it, case-insensitively (on SQLite only ASCII letters fold);
    ``limit`` None means no limit.
    """
    conditions: list[ColumnElement[bool]] = [sessions.c.env_id == env_id]
    if statuses is not None:
        conditions.append(sessions.c.status.in_(list(statuses)))
    if channel is not None:
        conditions.append(sessions.c.channel == channel)
    if parent_id is not None:
        conditions.append(sessions.c.parent_id == parent_id)
    if roots:
        conditions.append(sessions.c.parent_id.is_(None))
    if search:
        conditions.append(sessions.c.title.icontains(search, autoescape=True))
    total_query = select(func.count()).select_from(sessions).where(*conditions)
    total = int((await conn.execute(total_query)).scalar_one())
    query: Select[Any] = (
        select(sessions)
        .where(*conditions)
        .order_by(sessions.c.created.desc(), sessions.c.id.desc())
        .offset(max(offset, 0))
    )
    if limit is not None:
        query = query.limit(max(limit, 0))
    return [_session(r._mapping) for r in await conn.execute(query)], total


async def quiet_sessions(
    conn: AsyncConnection, *, status: str, before_ms: int, limit: int = 100
) -> list[Session]:
    """Sessions of any environment in ``status`` whose last activity is older than
    ``before_ms`` (epoch ms), the quietest first, at most ``limit``."""
    query = (
        select(sessions)
        .where(sessions.c.status == status, sessions.c.last_activity < before_ms)
        .order_by(sessions.c.last_activity, sessions.c.id)
        .limit(limit)
    )
    return [_session(r._mapping) for r in await conn.execute(query)]


def _session_values(s: Session) -> dict[str, Any]:
    return {
        "id": s.id,
        "env_id": s.env_id,
        "parent_id": s.parent_id,
        "status": s.status,
        "channel": s.channel,
        "user_id": s.user_id,
        "title": s.title,
        "directory": s.directory,
        "slug": s.slug,
        "project_id": s.project_id,
        "created": s.created,
        "updated": s.updated,
        "last_activity": s.last_activity,
        "terminated": s.terminated,
        "model_provider": s.model.provider_id if s.model else None,
        "model_id": s.model.model_id if s.model else None,
        "sandbox_id": s.sandbox_id,
        "tokens": s.tokens.to_json(),
        "cost": s.cost,
        "turn_count": s.turn_count,
        "metadata": s.metadata,
        "permission": s.permission,
    }


def _session(row: RowMapping) -> Session:
    provider, model = row["model_provider"], row["model_id"]
    return Session(
        id=row["id"],
        env_id=row["env_id"],
        title=row["title"],
        directory=row["directory"],
        created=int(row["created"]),
        updated=int(row["updated"]),
        slug=row["slug"],
        project_id=row["project_id"],
        parent_id=row["parent_id"],
        status=row["status"],
        channel=row["channel"],
        user_id=row["user_id"],
        metadata=dict(row["metadata"] or {}),
        last_activity=int(row["last_activity"]),
        terminated=None if row["terminated"] is None else int(row["terminated"]),
        model=ModelRef(provider, model) if provider is not None and model is not None else None,
        sandbox_id=row["sandbox_id"],
        tokens=Tokens.from_json(row["tokens"]),
        cost=float(row["cost"]),
        turn_count=int(row["turn_count"]),
        permission=dict(row["permission"] or {}),
    )


# -- messages ----------------------------------------------------------------------------------


_UPSERTS: dict[str, Any] = {}


def _message_upsert(dialect: str) -> Any:
    """The message upsert, built once per dialect with bound parameters (building and
    hashing a fresh statement per call costs more than SQLite takes to run it)."""
    stmt = _UPSERTS.get(dialect)
    if stmt is None:
        env_id = (
            select(sessions.c.env_id).where(sessions.c.id == bindparam("sid")).scalar_subquery()
        )
        insert = (postgresql if dialect == "postgresql" else sqlite).insert(session_messages)
        insert = insert.values(
            id=bindparam("id"),
            session_id=bindparam("sid"),
            env_id=env_id,
            role=bindparam("role"),
            created=bindparam("created"),
            completed=bindparam("completed"),
            data=bindparam("data", type_=session_messages.c.data.type),
        )
        replace = ("role", "created", "completed", "data")
        stmt = _UPSERTS[dialect] = insert.on_conflict_do_update(
            index_elements=[session_messages.c.id],
            set_={k: insert.excluded[k] for k in replace},
        )
    return stmt


async def save_messages(conn: AsyncConnection, messages: Sequence[Message]) -> None:
    """`save_message` for several messages, in one statement execution."""
    if not messages:
        return
    rows = []
    for m in messages:
        values = _message_values(m)
        values["sid"] = values.pop("session_id")
        rows.append(values)
    await conn.execute(_message_upsert(conn.dialect.name), rows)


async def save_message(conn: AsyncConnection, m: Message) -> None:
    """Insert the message with its parts, or replace the stored one with the same id (its
    session stays the one it was first stored in). The session must exist."""
    await save_messages(conn, [m])


async def get_message(conn: AsyncConnection, session_id: str, message_id: str) -> Message | None:
    """The message ``message_id`` of session ``session_id``, with its parts."""
    query = select(session_messages).where(
        session_messages.c.id == message_id, session_messages.c.session_id == session_id
    )
    row = (await conn.execute(query)).first()
    return _message(row._mapping) if row else None


async def list_messages(
    conn: AsyncConnection, session_id: str, *, limit: int | None = None
) -> list[Message]:
    """The session's messages with their parts, oldest first; ``limit`` keeps the last n."""
    query = select(session_messages).where(session_messages.c.session_id == session_id)
    if limit is None:
        query = query.order_by(session_messages.c.created, session_messages.c.id)
        return [_message(r._mapping) for r in await conn.execute(query)]
    query = query.order_by(session_messages.c.created.desc(), session_messages.c.id.desc()).limit(
        max(limit, 0)
    )
    return [_message(r._mapping) for r in await conn.execute(query)][::-1]


async def unfinished_messages(conn: AsyncConnection, *, role: str = "assistant") -> list[Message]:
    """Messages of any environment that never completed, oldest first: assistant messages
    whose turn was cut off (e.g. by a crash), or (``role="user"``) prompts never dealt with."""
    query = (
        select(session_messages)
        .where(session_messages.c.role == role, session_messages.c.completed.is_(None))
        .order_by(session_messages.c.created, session_messages.c.id)
    )
    return [_message(r._mapping) for r in await conn.execute(query)]


async def message_exists(conn: AsyncConnection, message_id: str) -> bool:
    """Whether any session holds a message with this id (ids are unique across sessions)."""
    query = select(session_messages.c.id).where(session_messages.c.id == message_id)
    return (await conn.execute(query)).first() is not None


async def copy_messages(
    conn: AsyncConnection,
    source_session_id: str,
    target_session_id: str,
    *,
    until_message_id: str | None = None,
    new_ids: Callable[[str], str],
) -> int:
    """Copy the source session's messages into the target session (for a fork), oldest first,
    up to and including ``until_message_id`` (every message when it is None or not in the
    source). Messages and parts get fresh ids from ``new_ids("msg")`` / ``new_ids("prt")``;
    times are kept, and assistant messages point at the copies of the prompts they answer.
    Returns how many messages were copied; the target session must exist.
    """
    source = await list_messages(conn, source_session_id)
    ids = [m.id for m in source]
    if until_message_id is not None and until_message_id in ids:
        source = source[: ids.index(until_message_id) + 1]
    if not source:
        return 0
    env_id = (
        await conn.execute(select(sessions.c.env_id).where(sessions.c.id == target_session_id))
    ).scalar_one()
    renamed = {m.id: new_ids("msg") for m in source}
    rows = []
    for m in source:
        copy = m.snapshot(with_parts=True)
        copy.id = renamed[m.id]
        copy.session_id = target_session_id
        if copy.parent_id is not None:
            copy.parent_id = renamed.get(copy.parent_id, copy.parent_id)
        for part in copy.parts:
            part.id = new_ids("prt")
            part.session_id = target_session_id
            part.message_id = copy.id
        rows.append({**_message_values(copy), "env_id": env_id})
    await conn.execute(session_messages.insert(), rows)
    return len(rows)


def _message_values(m: Message) -> dict[str, Any]:
    return {
        "id": m.id,
        "session_id": m.session_id,
        "role": m.role,
        "created": m.created,
        "completed": m.completed,
        "data": {
            "parent_id": m.parent_id,
            "model": (
                {"providerID": m.model.provider_id, "modelID": m.model.model_id}
                if m.model
                else None
            ),
            "system": m.system,
            "agent": m.agent,
            "tokens": m.tokens.to_json(),
            "cost": m.cost,
            "finish": m.finish,
            "error": m.error,
            "synthetic": m.synthetic,
            "cwd": m.cwd,
            "parts": [{"id": p.id, "type": p.type, "data": p.data} for p in m.parts],
        },
    }


def _message(row: RowMapping) -> Message:
    data: dict[str, Any] = row["data"]
    model = data.get("model")
    message_id, session_id = row["id"], row["session_id"]
    return Message(
        id=message_id,
        session_id=session_id,
        role=row["role"],
        created=int(row["created"]),
        parts=[
            Part(p["id"], session_id, message_id, p["type"], p.get("data") or {})
            for p in data.get("parts") or []
        ],
        completed=None if row["completed"] is None else int(row["completed"]),
        parent_id=data.get("parent_id"),
        model=ModelRef(model["providerID"], model["modelID"]) if model else None,
        system=data.get("system"),
        agent=data.get("agent", "build"),
        tokens=Tokens.from_json(data.get("tokens")),
        cost=float(data.get("cost", 0.0)),
        finish=data.get("finish"),
        error=data.get("error"),
        synthetic=bool(data.get("synthetic", False)),
        cwd=data.get("cwd", "/workspace"),
    )
