"""Sessions, messages and parts stored on real SQLite and PostgreSQL: what is written comes back
exactly, lists filter and page as the surfaces promise, and a fork copies a conversation."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from agentplex.core.session_model import Message, ModelRef, Part, Session, Tokens, new_id
from agentplex.db.engine import Database
from agentplex.db.records import sessions as records
from agentplex.db.tables import session_messages
from agentplex.db.tables import sessions as sessions_table

# 300 KiB of mixed scripts: emoji (4-byte UTF-8), CJK, combining marks, quotes, NUL, newlines
BIG_TEXT = ('héllo 世界 🧪🚀 e\u0301 "quoted" \\ \x00 tab\t line\n' * 6000)[: 300 * 1024]


def make_session(env_id: str, **fields: Any) -> Session:
    values: dict[str, Any] = {
        "id": new_id("ses", descending=True),
        "env_id": env_id,
        "title": "New session",
        "directory": "/workspace",
        "created": 1_700_000_000_000,
        "updated": 1_700_000_000_000,
        "last_activity": 1_700_000_000_000,
    }
    values.update(fields)
    return Session(**values)


def full_session(env_id: str) -> Session:
    return make_session(
        env_id,
        title="Ünïcödé 标题 🚀 '%_' \\",
        directory="/workspace/проект",
        created=1_767_225_600_123,
        updated=1_767_225_600_456,
        slug="quiet-meadow",
        project_id="proj_1",
        parent_id="ses_parent",
        status="idle",
        channel="slack",
        user_id="U123",
        metadata={"team": "ops", "nested": {"list": [1, 2.5, None, True, "é"], "empty": {}}},
        last_activity=1_767_225_600_789,
        terminated=1_767_225_601_000,
        model=ModelRef("anthropic", "claude-sonnet-4-5"),
        sandbox_id="sbx_abc",
        tokens=Tokens(input=1200, output=340, reasoning=56, cache_read=7, cache_write=8),
        cost=0.012345678901234567,
        turn_count=3,
        permission={"bash": "ask", "edit": "allow", "webfetch": "deny"},
    )


def user_message(session_id: str, created: int, text: str = "Hello there") -> Message:
    mid = new_id("msg")
    return Message(
        id=mid,
        session_id=session_id,
        role="user",
        created=created,
        parts=[Part(new_id("prt"), session_id, mid, "text", {"text": text})],
        model=ModelRef("openai", "gpt-4o-mini"),
        system="Be brief.",
        agent="build",
    )


def assistant_message(
    session_id: str, parent: Message, created: int, *, completed: int | None = None
) -> Message:
    mid = new_id("msg")

    def part(kind: str, data: dict[str, Any]) -> Part:
        return Part(new_id("prt"), session_id, mid, kind, data)

    return Message(
        id=mid,
        session_id=session_id,
        role="assistant",
        created=created,
        completed=completed,
        parent_id=parent.id,
        model=ModelRef("openai", "gpt-4o-mini"),
        tokens=Tokens(input=10, output=20, reasoning=3, cache_read=1, cache_write=2),
        cost=0.000123,
        finish="tool-calls" if completed else None,
        parts=[
            part("step-start", {}),
            part("reasoning", {"text": "thinking… 🤔", "time": {"start": created, "end": created}}),
            part(
                "tool",
                {
                    "callID": "call_1",
                    "tool": "bash",
                    "state": {
                        "status": "completed",
                        "input": {"command": "ls -la", "env": {"A": "1"}},
                        "output": "a\nb\n",
                        "title": "ls",
                        "metadata": {"exit": 0, "lines": [1, 2]},
                        "time": {"start": created, "end": created + 5},
                    },
                },
            ),
            part("text", {"text": "done ✅", "time": {"start": created, "end": created + 9}}),
            part(
                "step-finish",
                {
                    "reason": "tool-calls",
                    "cost": 0.000123,
                    "tokens": {
                        "input": 10,
                        "output": 20,
                        "reasoning": 3,
                        "cache": {"read": 1, "write": 2},
                    },
                },
            ),
        ],
    )


async def add_session(db: Database, s: Session) -> Session:
    async with db.write() as conn:
        await records.insert_session(conn, s)
    return s


async def save(db: Database, *messages: Message) -> None:
    async with db.write() as conn:
        for m in messages:
            await records.save_message(conn, m)


# -- sessions ----------------------------------------------------------------------------------


async def test_a_session_comes_back_exactly_as_stored(db: Database, env_id: str) -> None:
    full = await add_session(db, full_session(env_id))
    bare = await add_session(db, make_session(env_id))
    async with db.read() as conn:
        assert await records.get_session(conn, env_id, full.id) == full
        assert await records.get_session(conn, env_id, bare.id) == bare
        assert await records.get_session(conn, env_id, "ses_missing") is None


async def test_a_session_is_invisible_from_another_environment(
    db: Database, env_id: str, other_env_id: str
) -> None:
    s = await add_session(db, make_session(env_id))
    async with db.read() as conn:
        assert await records.get_session(conn, other_env_id, s.id) is None
        assert await records.list_sessions(conn, other_env_id) == ([], 0)


async def test_inserting_a_session_twice_fails(db: Database, env_id: str) -> None:
    s = await add_session(db, make_session(env_id))
    with pytest.raises(IntegrityError):
        await add_session(db, s)


async def test_saving_a_session_writes_every_mutable_field(db: Database, env_id: str) -> None:
    s = await add_session(db, make_session(env_id))
    changed = full_session(env_id)
    changed.id, changed.created = s.id, s.created
    async with db.write() as conn:
        await records.save_session(conn, changed)
    async with db.read() as conn:
        assert await records.get_session(conn, env_id, s.id) == changed

    changed.model, changed.terminated, changed.user_id, changed.parent_id = None, None, None, None
    changed.metadata, changed.tokens = {}, Tokens()
    async with db.write() as conn:
        await records.save_session(conn, changed)
    async with db.read() as conn:
        assert await records.get_session(conn, env_id, s.id) == changed


async def test_sessions_list_newest_first_with_filters_and_totals(
    db: Database, env_id: str, other_env_id: str
) -> None:
    clock = itertools.count(1_700_000_000_000, 1000)
    made = [
        make_session(
            env_id,
            created=next(clock),
            title=title,
            status=status,
            channel=channel,
            parent_id=parent,
        )
        for title, status, channel, parent in [
            ("Deploy the API", "active", "api", None),
            ("deploy WORKERS", "idle", "slack", None),
            ("Write docs", "terminated", "api", None),
            ("100% done_ok", "active", "api", None),
            ("child of deploy", "active", "api", "ses_root"),
        ]
    ]
    for s in made:
        await add_session(db, s)
    await add_session(db, make_session(other_env_id, title="Deploy elsewhere"))

    async def titles(**filters: Any) -> tuple[list[str], int]:
        async with db.read() as conn:
            found, total = await records.list_sessions(conn, env_id, **filters)
        return [s.title for s in found], total

    newest_first = [s.title for s in reversed(made)]
    assert await titles() == (newest_first, 5)
    assert await titles(statuses=["active", "idle"]) == (
        ["child of deploy", "100% done_ok", "deploy WORKERS", "Deploy the API"],
        4,
    )
    assert await titles(statuses=[]) == ([], 0)
    assert await titles(channel="slack") == (["deploy WORKERS"], 1)
    assert await titles(parent_id="ses_root") == (["child of deploy"], 1)
    assert await titles(roots=True) == (newest_first[1:], 4)
    assert await titles(search="DEPLOY") == (
        ["child of deploy", "deploy WORKERS", "Deploy the API"],
        3,
    )
    # LIKE wildcards in a search are plain characters
    assert await titles(search="0%") == (["100% done_ok"], 1)
    assert await titles(search="e_o") == (["100% done_ok"], 1)
    assert await titles(search="deploy", roots=True, statuses=["active"]) == (["Deploy the API"], 1)
    # pages: the total counts every match, not the page
    assert await titles(limit=2) == (newest_first[:2], 5)
    assert await titles(limit=2, offset=2) == (newest_first[2:4], 5)
    assert await titles(limit=2, offset=4) == (newest_first[4:], 5)
    assert await titles(offset=10) == ([], 5)
    assert await titles(limit=0) == ([], 5)


async def test_sessions_created_in_the_same_millisecond_order_by_id(
    db: Database, env_id: str
) -> None:
    same = [make_session(env_id, id=f"ses_{c}", created=5) for c in "bca"]
    for s in same:
        await add_session(db, s)
    async with db.read() as conn:
        found, _ = await records.list_sessions(conn, env_id)
    assert [s.id for s in found] == ["ses_c", "ses_b", "ses_a"]


async def test_quiet_sessions_are_found_across_environments(
    db: Database, env_id: str, other_env_id: str
) -> None:
    quiet = await add_session(db, make_session(env_id, last_activity=1000))
    quieter = await add_session(db, make_session(other_env_id, last_activity=500))
    await add_session(db, make_session(env_id, last_activity=2000))  # at the cut-off: not yet
    await add_session(db, make_session(env_id, last_activity=10, status="idle"))
    async with db.read() as conn:
        found = await records.quiet_sessions(conn, status="active", before_ms=2000)
        assert [s.id for s in found] == [quieter.id, quiet.id]
        limited = await records.quiet_sessions(conn, status="active", before_ms=2000, limit=1)
        assert [s.id for s in limited] == [quieter.id]
        idle = await records.quiet_sessions(conn, status="idle", before_ms=2000)
        assert [s.last_activity for s in idle] == [10]


# -- messages ----------------------------------------------------------------------------------


async def test_messages_and_parts_come_back_exactly(db: Database, env_id: str) -> None:
    s = await add_session(db, make_session(env_id))
    prompt = user_message(s.id, 1000, BIG_TEXT)
    answer = assistant_message(s.id, prompt, 1001, completed=1050)
    failed = Message(
        id=new_id("msg"),
        session_id=s.id,
        role="assistant",
        created=1100,
        completed=1101,
        parent_id=prompt.id,
        error={
            "name": "APIError",
            "data": {
                "message": "upstream 500 — réessayez",
                "statusCode": 500,
                "isRetryable": True,
                "responseHeaders": {"x-id": "1"},
                "responseBody": '{"error":"boom"}',
            },
        },
    )
    synthetic = Message(
        id=new_id("msg"),
        session_id=s.id,
        role="user",
        created=1200,
        synthetic=True,
        cwd="/workspace/sub",
        agent="plan",
    )
    await save(db, prompt, answer, failed, synthetic)
    async with db.read() as conn:
        stored = await records.list_messages(conn, s.id)
        assert stored == [prompt, answer, failed, synthetic]
        assert stored[0].parts[0].data["text"] == BIG_TEXT
        assert await records.get_message(conn, s.id, answer.id) == answer
        assert await records.get_message(conn, "ses_other", answer.id) is None
        assert await records.get_message(conn, s.id, "msg_missing") is None


async def test_saving_a_message_again_replaces_it(db: Database, env_id: str) -> None:
    s = await add_session(db, make_session(env_id))
    prompt = user_message(s.id, 1000)
    answer = assistant_message(s.id, prompt, 1001)
    streaming = answer.snapshot(with_parts=True)
    streaming.parts = streaming.parts[:1]
    await save(db, prompt, streaming)
    await save(db, streaming)  # the same state twice is harmless
    await save(db, answer)  # the step ends: parts appended, completed set
    answer.completed, answer.finish = 1090, "stop"
    answer.parts[3].data["text"] += " and more"
    answer.parts.reverse()
    await save(db, answer)
    async with db.read() as conn:
        stored = await records.list_messages(conn, s.id)
        rows = await conn.execute(sa.select(sa.func.count()).select_from(session_messages))
        assert rows.scalar_one() == 2
    assert stored == [prompt, answer]
    assert [p.type for p in stored[1].parts] == [
        "step-finish",
        "text",
        "tool",
        "reasoning",
        "step-start",
    ]


async def test_a_message_of_an_unknown_session_is_refused(db: Database) -> None:
    with pytest.raises(IntegrityError):
        await save(db, user_message("ses_missing", 1000))


async def test_messages_list_oldest_first_and_limit_keeps_the_last(
    db: Database, env_id: str
) -> None:
    s = await add_session(db, make_session(env_id))
    other = await add_session(db, make_session(env_id))
    messages = [user_message(s.id, 1000 + i // 2, f"m{i}") for i in range(6)]
    await save(db, *reversed(messages), user_message(other.id, 999))
    async with db.read() as conn:
        assert [m.text() for m in await records.list_messages(conn, s.id)] == [
            f"m{i}" for i in range(6)
        ]
        last = await records.list_messages(conn, s.id, limit=2)
        assert [m.text() for m in last] == ["m4", "m5"]
        assert len(await records.list_messages(conn, s.id, limit=100)) == 6
        assert await records.list_messages(conn, s.id, limit=0) == []
        assert await records.list_messages(conn, "ses_missing") == []


async def test_deleting_a_session_deletes_its_messages(db: Database, env_id: str) -> None:
    s = await add_session(db, make_session(env_id))
    kept = await add_session(db, make_session(env_id))
    prompt = user_message(s.id, 1000)
    await save(db, prompt, assistant_message(s.id, prompt, 1001), user_message(kept.id, 1000))
    async with db.write() as conn:
        await conn.execute(sessions_table.delete().where(sessions_table.c.id == s.id))
    async with db.read() as conn:
        assert await records.list_messages(conn, s.id) == []
        assert len(await records.list_messages(conn, kept.id)) == 1


async def test_unfinished_assistant_messages_are_found_in_every_environment(
    db: Database, env_id: str, other_env_id: str
) -> None:
    a = await add_session(db, make_session(env_id))
    b = await add_session(db, make_session(other_env_id))
    prompt_a, prompt_b = user_message(a.id, 1000), user_message(b.id, 900)
    cut_a = assistant_message(a.id, prompt_a, 1001)
    done_a = assistant_message(a.id, prompt_a, 1002, completed=1003)
    cut_b = assistant_message(b.id, prompt_b, 901)
    await save(db, prompt_a, cut_a, done_a, prompt_b, cut_b)
    async with db.read() as conn:
        assert await records.unfinished_messages(conn) == [cut_b, cut_a]
    cut_a.completed = 2000
    cut_a.error = {"name": "MessageAbortedError", "data": {"message": "server restarted"}}
    await save(db, cut_a)
    async with db.read() as conn:
        assert await records.unfinished_messages(conn) == [cut_b]


# -- fork --------------------------------------------------------------------------------------


def counter_ids() -> Any:
    seen = itertools.count(1)
    return lambda prefix: f"{prefix}_copy{next(seen):04d}"


async def test_copying_messages_gives_the_fork_its_own_conversation(
    db: Database, env_id: str
) -> None:
    source = await add_session(db, make_session(env_id))
    fork = await add_session(db, make_session(env_id))
    first = user_message(source.id, 1000, "first")
    reply = assistant_message(source.id, first, 1001, completed=1002)
    second = user_message(source.id, 1003, "second")
    reply2 = assistant_message(source.id, second, 1004, completed=1005)
    await save(db, first, reply, second, reply2)

    async with db.write() as conn:
        n = await records.copy_messages(conn, source.id, fork.id, new_ids=counter_ids())
    assert n == 4
    async with db.read() as conn:
        copies = await records.list_messages(conn, fork.id)
        originals = await records.list_messages(conn, source.id)
        env_ids = (
            (
                await conn.execute(
                    sa.select(session_messages.c.env_id).where(
                        session_messages.c.session_id == fork.id
                    )
                )
            )
            .scalars()
            .all()
        )
    assert originals == [first, reply, second, reply2]  # the source is untouched
    assert set(env_ids) == {env_id}
    assert [m.text() for m in copies] == [m.text() for m in originals]
    assert [m.created for m in copies] == [1000, 1001, 1003, 1004]
    copied_ids = {m.id for m in copies} | {p.id for m in copies for p in m.parts}
    assert all(i.startswith(("msg_copy", "prt_copy")) for i in copied_ids)
    assert len(copied_ids) == 4 + sum(len(m.parts) for m in originals)
    for copy, original in zip(copies, originals, strict=True):
        assert copy.session_id == fork.id
        assert all(p.session_id == fork.id and p.message_id == copy.id for p in copy.parts)
        assert [(p.type, p.data) for p in copy.parts] == [(p.type, p.data) for p in original.parts]
        assert (copy.tokens, copy.cost, copy.model, copy.finish) == (
            original.tokens,
            original.cost,
            original.model,
            original.finish,
        )
    assert copies[1].parent_id == copies[0].id
    assert copies[3].parent_id == copies[2].id


async def test_copying_messages_stops_at_the_chosen_message(db: Database, env_id: str) -> None:
    source = await add_session(db, make_session(env_id))
    fork = await add_session(db, make_session(env_id))
    empty = await add_session(db, make_session(env_id))
    first = user_message(source.id, 1000, "first")
    reply = assistant_message(source.id, first, 1001, completed=1002)
    second = user_message(source.id, 1003, "second")
    await save(db, first, reply, second)
    async with db.write() as conn:
        n = await records.copy_messages(
            conn, source.id, fork.id, until_message_id=reply.id, new_ids=new_id
        )
        assert n == 2
        assert await records.copy_messages(conn, empty.id, fork.id, new_ids=new_id) == 0
    async with db.read() as conn:
        copies = await records.list_messages(conn, fork.id)
    assert [m.role for m in copies] == ["user", "assistant"]
    assert copies[0].text() == "first" and copies[1].parent_id == copies[0].id


# -- schema ------------------------------------------------------------------------------------
