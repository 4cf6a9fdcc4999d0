"""Sessions: create, prompt, abort, fork and terminate conversations with the built-in agent.

`SessionService` is what every surface calls (OpenCode/HotPlex ``/session``, PRX
``/api/v1/sessions``, the HotPlex WebSocket): one session is one session whichever surface made
it. A prompt stores the user message and queues a *turn* behind any running one; the session's
runner task runs turns one at a time through the agent loop (``agentplex.agent.loop``), which
streams every change as a `SessionEvent` and stores messages and parts as they complete.

Errors: `SessionNotFound` (404), `MessageNotFound` (404), `SessionTerminated` (409),
`PermissionNotFound` (404), `BadRequest` (400: an empty prompt, an unknown part type, a model
that is not offered).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import orjson
from sqlalchemy.exc import IntegrityError

from agentplex.agent.loop import ABORTED, Turn, TurnLimits, run_turn
from agentplex.agent.providers import resolve_model
from agentplex.core.ports import ModelInfo, ModelProvider, ToolSource
from agentplex.core.session_events import SessionEventLog
from agentplex.core.session_model import (
    Message,
    ModelRef,
    Part,
    Session,
    new_id,
    new_slug,
    now_ms,
)
from agentplex.db.engine import Database
from agentplex.db.records import sessions as store
from agentplex.errors import (
    AgentplexError,
    BadRequest,
    MessageNotFound,
    ModelNotConfigured,
    PermissionNotFound,
    SandboxNotFound,
    SessionNotFound,
    SessionTerminated,
)
from agentplex.settings import AgentSettings

if TYPE_CHECKING:
    from agentplex.core.sandboxes import SandboxService

log = logging.getLogger("agentplex.sessions")

WORKSPACE = "/workspace"
_KEPT_RUNNERS = 256
_MESSAGE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_SESSION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")

PermissionResponse = Literal["once", "always", "reject"]


@dataclass(frozen=True, slots=True)
class PromptPart:
    """A part of a prompt: ``text`` (``text``) or ``file`` (``mime``, ``url``, ``filename``)."""

    type: Literal["text", "file"]
    text: str = ""
    mime: str = ""
    url: str = ""
    filename: str | None = None
    synthetic: bool = False


@dataclass(frozen=True, slots=True)
class Prompt:
    """What a client sends to a session.

    ``model`` overrides the session's model for this turn; ``system`` is added to the agent's
    system prompt; ``tools`` switches tools off (``{"bash": false}``); ``no_reply`` stores the
    message without answering it; ``message_id`` is the client's id for the user message.
    """

    parts: Sequence[PromptPart]
    model: ModelRef | None = None
    system: str | None = None
    agent: str = "build"
    tools: Mapping[str, bool] = field(default_factory=dict)
    no_reply: bool = False
    message_id: str | None = None


@dataclass(frozen=True, slots=True)
class FileEntry:
    """An entry of a session's workspace (``GET /file``)."""

    name: str
    path: str
    absolute: str
    type: Literal["file", "directory"]
    size: int = 0


@dataclass(frozen=True, slots=True)
class ProviderListing:
    """What ``/config/providers`` and ``/provider`` show: the configured providers (never
    their keys), their models, and the default model of each."""

    providers: tuple[Any, ...]  # ModelProvider
    default: Mapping[str, str]
    default_model: ModelRef | None


@dataclass(slots=True)
class _Queued:
    user: Message
    prompt: Prompt
    done: asyncio.Future[Message]
    seq: int = 0


@dataclass(slots=True)
class _Runner:
    """A session's turns, run one at a time by ``task``."""

    session: Session
    queue: list[_Queued] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    turn: asyncio.Task[Message] | None = None
    history: list[Message] | None = None
    approved: set[tuple[str, str]] = field(default_factory=set)
    # prompts numbered as they arrive; an abort ends every prompt up to `abort_upto`, those
    # still being stored included (`enqueuing` keeps the runner alive for them)
    started: int = 0
    abort_upto: int = 0
    enqueuing: int = 0


@dataclass(slots=True)
class _PermissionRequest:
    id: str
    session_id: str
    env_id: str
    answer: asyncio.Future[str]


class SessionService:
    """Sessions of every environment, their turns and their event log."""

    def __init__(
        self,
        db: Database,
        sandboxes: SandboxService,
        settings: AgentSettings,
        providers: Sequence[ModelProvider],
        tools: Sequence[ToolSource],
        events: SessionEventLog,
    ) -> None:
        self._db = db
        self._sandboxes = sandboxes
        self._settings = settings
        self._providers = {p.id: p for p in providers}
        self._tools = tuple(tools)
        self.events = events
        self._limits = TurnLimits.from_settings(settings)
        self._sessions: dict[str, Session] = {}
        self._runners: dict[str, _Runner] = {}
        self._status: dict[str, dict[str, dict[str, Any]]] = {}
        self._permissions: dict[str, _PermissionRequest] = {}
        self._sandbox_locks: dict[str, asyncio.Lock] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._writer = _WriteBehind(db)
        self._prompt_locks: dict[str, list[Any]] = {}  # session id -> [lock, users]

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """End the turns the previous server process left running, then watch for quiet
        sessions."""
        async with self._db.write() as conn:
            for message in await store.unfinished_messages(conn):
                _end_interrupted(message)
                await store.save_message(conn, message)
            for prompt in await store.unfinished_messages(conn, role="user"):
                # queued when the server stopped: its turn never began
                await store.save_message(conn, _unanswered(prompt))
                prompt.completed = now_ms()
                await store.save_message(conn, prompt)
        self._sweeper = asyncio.create_task(self._sweep(), name="session-sweeper")

    async def close(self) -> None:
        """Cancel every running turn (each ends aborted and stored), stop the sweeper."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        tasks = [r.task for r in self._runners.values() if r.task is not None]
        for runner in list(self._runners.values()):
            self._cancel(runner, drop_queue=True)
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._writer.flush()
        for provider in self._providers.values():
            with contextlib.suppress(Exception):
                await provider.close()

    # -- sessions ---------------------------------------------------------------------------

    async def create(
        self,
        env_id: str,
        *,
        title: str | None = None,
        parent_id: str | None = None,
        channel: str = "api",
        user_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        model: ModelRef | None = None,
        session_id: str | None = None,
        id_prefix: str = "ses",
        permission: Mapping[str, str] | None = None,
    ) -> Session:
        """A new active session. ``session_id`` chooses the id (HotPlex clients name their
        sessions); BadRequest if it is malformed, Conflict-like BadRequest if taken."""
        _check_text("channel", channel, 64)
        if user_id is not None:
            _check_text("user_id", user_id, 200)
        if title is not None:
            _check_text("title", title, 10_000)
        if parent_id is not None:
            await self.get(env_id, parent_id)
        if model is not None:
            self._resolve(model)
        if session_id is not None:
            if not _SESSION_ID.match(session_id):
                raise BadRequest(
                    "Invalid session id: use 1-64 letters, digits, '_', '-', '.' or ':'"
                )
            if await self._find(env_id, session_id) is not None:
                raise BadRequest(f"Session {session_id} already exists")
        now = now_ms()
        session = Session(
            id=session_id or new_id(id_prefix, descending=id_prefix == "ses"),
            env_id=env_id,
            title=title or f"New session - {_iso(now)}",
            directory=WORKSPACE,
            created=now,
            updated=now,
            slug=new_slug(),
            parent_id=parent_id,
            channel=channel,
            user_id=user_id,
            metadata=dict(metadata or {}),
            last_activity=now,
            model=model,
            permission=dict(permission or {}),
        )
        try:
            async with self._db.write() as conn:
                await store.insert_session(conn, session)
        except IntegrityError:
            # the id is taken, in another environment (this one was checked above)
            raise BadRequest(f"Session id {session.id} is in use: choose another") from None
        self._sessions[session.id] = session
        self.events.append(env_id, "session.created", session.id, session=_snap(session))
        return session

    async def _find(self, env_id: str, session_id: str) -> Session | None:
        if "\x00" in session_id or len(session_id) > 256:
            return None  # no such id can exist (and PostgreSQL text refuses NUL)
        session = self._sessions.get(session_id)
        if session is not None:
            return session if session.env_id == env_id else None
        async with self._db.read() as conn:
            session = await store.get_session(conn, env_id, session_id)
        if session is not None and session.status != "terminated":
            self._sessions[session.id] = session
        return session

    async def get(self, env_id: str, session_id: str) -> Session:
        """The session (terminated ones too); SessionNotFound otherwise."""
        session = await self._find(env_id, session_id)
        if session is None:
            raise SessionNotFound(f"Session not found: {shown_id(session_id)}")
        return session

    async def _live(self, env_id: str, session_id: str) -> Session:
        session = await self.get(env_id, session_id)
        if session.status == "terminated":
            raise SessionTerminated(
                f"Session {session_id} is terminated: create a new session to continue"
            )
        return session

    async def list(
        self,
        env_id: str,
        *,
        status: str | None = None,
        channel: str | None = None,
        parent_id: str | None = None,
        roots: bool = False,
        search: str | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> tuple[builtins.list[Session], int]:
        """Sessions newest first, and how many match; ``status`` None means all but
        terminated."""
        statuses = [status] if status else ["active", "idle"]
        async with self._db.read() as conn:
            found, total = await store.list_sessions(
                conn,
                env_id,
                statuses=statuses,
                channel=channel,
                parent_id=parent_id,
                roots=roots,
                search=search,
                limit=limit,
                offset=offset,
            )
        # the in-memory object is the current one (a turn may not have stored it yet)
        return [self._sessions.get(s.id, s) for s in found], total

    async def update(
        self,
        env_id: str,
        session_id: str,
        *,
        title: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Session:
        session = await self._live(env_id, session_id)
        if title is not None:
            _check_text("title", title, 10_000)
            session.title = title
        if metadata is not None:
            session.metadata = dict(metadata)
        session.updated = now_ms()
        await self._save_session(session)
        self.events.append(env_id, "session.updated", session.id, session=_snap(session))
        return session

    async def delete(self, env_id: str, session_id: str) -> Session:
        """Terminate: stop the running turn (its model call and tools) and any queued one,
        reclaim the sandbox. SessionTerminated if it already was."""
        session = await self._live(env_id, session_id)
        session.status = "terminated"
        session.terminated = session.updated = now_ms()
        runner = self._runners.get(session.id)
        if runner is not None:
            self._cancel(runner, drop_queue=True)
            if runner.task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.wait_for(asyncio.shield(runner.task), 5)
        await self._save_session(session)
        self._sessions.pop(session.id, None)
        self._runners.pop(session.id, None)
        self.events.append(env_id, "session.deleted", session.id, session=_snap(session))
        await self._reclaim_sandbox(session)
        return session

    async def _reclaim_sandbox(self, session: Session) -> None:
        if session.sandbox_id is None:
            return
        try:
            await self._sandboxes.delete(session.env_id, session.sandbox_id)
        except SandboxNotFound:
            pass
        except Exception:
            log.exception(
                "could not delete sandbox %s of session %s", session.sandbox_id, session.id
            )

    async def children(self, env_id: str, session_id: str) -> builtins.list[Session]:
        await self.get(env_id, session_id)
        found, _ = await self.list(env_id, parent_id=session_id)
        return found

    async def fork(self, env_id: str, session_id: str, message_id: str | None = None) -> Session:
        """A new session holding copies of the messages (up to ``message_id``)."""
        source = await self.get(env_id, session_id)
        if message_id is not None:
            await self.message(env_id, session_id, message_id)
        base = re.sub(r" \(fork #\d+\)$", "", source.title)
        forks, _ = await self.list(env_id, search=f"{base} (fork #")
        fork = await self.create(
            env_id,
            title=f"{base} (fork #{len(forks) + 1})",
            model=source.model,
            channel=source.channel,
            user_id=source.user_id,
            metadata=source.metadata,
        )
        async with self._db.write() as conn:
            await store.copy_messages(
                conn, source.id, fork.id, until_message_id=message_id, new_ids=new_id
            )
        return fork

    # -- messages -------------------------------------------------------------------------

    async def messages(
        self, env_id: str, session_id: str, *, limit: int | None = None
    ) -> builtins.list[Message]:
        """Oldest first, with their parts; ``limit`` keeps the last n."""
        session = await self.get(env_id, session_id)
        runner = self._runners.get(session.id)
        if runner is not None and runner.history is not None:
            live = _with_running(runner)
            return live[-limit:] if limit else live
        async with self._db.read() as conn:
            return await store.list_messages(conn, session.id, limit=limit)

    async def message(self, env_id: str, session_id: str, message_id: str) -> Message:
        session = await self.get(env_id, session_id)
        runner = self._runners.get(session.id)
        if runner is not None and runner.history is not None:
            for m in _with_running(runner):
                if m.id == message_id:
                    return m
        async with self._db.read() as conn:
            found = await store.get_message(conn, session.id, message_id)
        if found is None:
            raise MessageNotFound(f"Message not found: {shown_id(message_id)}")
        return found

    # -- prompts ----------------------------------------------------------------------------

    async def prompt(self, env_id: str, session_id: str, prompt: Prompt) -> Message:
        """Store the prompt, run its turn (after any queued before it) and return the turn's
        last assistant message. With ``no_reply`` the user message is returned."""
        queued = await self._enqueue(env_id, session_id, prompt)
        if queued is None:
            raise AssertionError("unreachable")
        if isinstance(queued, Message):
            return queued
        return await asyncio.shield(queued.done)

    async def prompt_async(self, env_id: str, session_id: str, prompt: Prompt) -> Message:
        """Store the prompt and queue its turn; returns the stored user message."""
        queued = await self._enqueue(env_id, session_id, prompt)
        if isinstance(queued, Message):
            return queued
        assert queued is not None
        queued.done.add_done_callback(_consume_result)
        await self._writer.flush()  # stored before the caller is told it was accepted
        return queued.user

    async def _enqueue(
        self, env_id: str, session_id: str, prompt: Prompt
    ) -> _Queued | Message | None:
        # prompts to one session are taken in the order they arrive (the lock is FIFO)
        entry = self._prompt_locks.get(session_id)
        if entry is None:
            entry = self._prompt_locks[session_id] = [asyncio.Lock(), 0]
        entry[1] += 1  # prompts holding or waiting for the lock
        try:
            async with entry[0]:
                return await self._enqueue_now(env_id, session_id, prompt)
        finally:
            entry[1] -= 1
            if not entry[1]:
                del self._prompt_locks[session_id]

    async def _enqueue_now(
        self, env_id: str, session_id: str, prompt: Prompt
    ) -> _Queued | Message | None:
        session = await self._live(env_id, session_id)
        check_prompt(prompt)
        if prompt.model is not None:
            self._resolve(prompt.model)
        runner = self._runners.pop(session.id, None) or _Runner(session)
        self._runners[session.id] = runner  # the most recently used last
        runner.started += 1
        seq = runner.started
        runner.enqueuing += 1
        try:
            return await self._store_prompt(runner, seq, prompt)
        finally:
            runner.enqueuing -= 1

    async def _store_prompt(self, runner: _Runner, seq: int, prompt: Prompt) -> _Queued | Message:
        session = runner.session
        env_id = session.env_id
        now = now_ms()
        user = Message(
            id=prompt.message_id or new_id("msg"),
            session_id=session.id,
            role="user",
            created=now,
            model=prompt.model or session.model or self._default_ref(),
            system=prompt.system,
            agent=prompt.agent,
        )
        for p in prompt.parts:
            data: dict[str, Any]
            if p.type == "text":
                data = {"text": p.text}
                if p.synthetic:
                    data["synthetic"] = True
            else:
                data = {"mime": p.mime, "url": p.url}
                if p.filename is not None:
                    data["filename"] = p.filename
            user.parts.append(Part(new_id("prt"), session.id, user.id, p.type, data))
        if runner.history is None:
            async with self._db.read() as conn:
                runner.history = await store.list_messages(conn, session.id)
        if prompt.message_id is not None:
            if not _MESSAGE_ID.match(prompt.message_id):
                raise BadRequest(
                    "messageID must be 1-64 letters, digits, '_' or '-' (OpenCode's are msg_...)"
                )
            taken = any(m.id == user.id for m in runner.history)
            if not taken:
                async with self._db.read() as conn:
                    taken = await store.message_exists(conn, user.id)
            if taken:
                raise BadRequest(f"messageID {user.id} is already used: send a new one")
        # stored with the turn's first write (prompt_async and no_reply flush it at once)
        self._writer.put(user)
        runner.history.append(user)
        session.last_activity = now
        if session.status == "idle":
            session.status = "active"
        if session.model is None and user.model is not None:
            # OpenCode shows a session's model once it was first prompted
            session.model = user.model
        self.events.append(env_id, "message.updated", session.id, message=user.snapshot())
        for part in user.parts:
            self.events.append(env_id, "message.part.updated", session.id, part=part.snapshot())
        if prompt.no_reply:
            self._answered(user)
            await self._writer.flush()
            return user
        done: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        queued = _Queued(user, prompt, done, seq)
        runner.queue.append(queued)
        if runner.task is None or runner.task.done():
            self._set_status(env_id, session.id, {"type": "busy"})
            runner.task = asyncio.create_task(self._run(runner), name=f"session-{session.id}")
        return queued

    async def _run(self, runner: _Runner) -> None:
        """Run the session's queued turns one after the other, then go idle. The last
        turn's caller is answered after ``session.idle``, so what it reads next is settled."""
        session = runner.session
        last: tuple[_Queued, Message | BaseException] | None = None
        try:
            while runner.queue:
                queued = runner.queue[0]
                if queued.seq <= runner.abort_upto:
                    # aborted before its turn began: answer it as aborted, without the model
                    runner.turn = asyncio.create_task(self._fail_turn(runner, queued.user, None))
                else:
                    runner.turn = asyncio.create_task(self._turn(runner, queued))
                result: Message | BaseException
                try:
                    result = await asyncio.shield(runner.turn)
                except asyncio.CancelledError:
                    if not runner.turn.done():
                        # the runner itself was cancelled (server stopping): stop the turn
                        runner.turn.cancel()
                        with contextlib.suppress(asyncio.CancelledError, Exception):
                            await runner.turn
                        raise
                    result = await self._aborted_result(runner, queued)
                except Exception as exc:
                    log.exception("turn of session %s failed", session.id)
                    result = exc
                if runner.queue and runner.queue[0] is queued:
                    runner.queue.pop(0)
                self._answered(queued.user)
                if last is not None:
                    _settle(*last)
                last = (queued, result)
                session.turn_count += 1
                session.last_activity = session.updated = now_ms()
                if session.status == "terminated":
                    break
                # the turn's messages and the session in one transaction (often), then the
                # caller is answered: what it reads next is stored
                self._writer.put(session)
                await self._writer.flush()
                self.events.append(
                    session.env_id, "session.updated", session.id, session=_snap(session)
                )
        finally:
            runner.turn = None
            self._set_status(session.env_id, session.id, None)
            self.events.append(session.env_id, "session.idle", session.id)
            if last is not None:
                _settle(*last)
            for queued in runner.queue:
                self._answered(queued.user)
                if not queued.done.done():
                    queued.done.cancel()
            runner.queue.clear()
            if session.status == "terminated":
                self._runners.pop(session.id, None)
            else:
                self._forget_idle_runners()

    def _forget_idle_runners(self) -> None:
        """Keep the history of recently used sessions in memory (a prompt then reads no
        history from the database), up to `_KEPT_RUNNERS` idle ones, the oldest dropped."""
        excess = len(self._runners) - _KEPT_RUNNERS
        if excess <= 0:
            return
        for session_id, runner in list(self._runners.items()):
            if excess <= 0:
                break
            if (runner.task is None or runner.task.done()) and not runner.enqueuing:
                del self._runners[session_id]
                excess -= 1

    async def _turn(self, runner: _Runner, queued: _Queued) -> Message:
        session = runner.session
        history = runner.history if runner.history is not None else []
        try:
            provider, info = self._resolve(queued.user.model)
        except (ModelNotConfigured, BadRequest) as exc:
            return await self._fail_turn(runner, queued.user, exc)
        system = self._settings.system_prompt
        if queued.prompt.system:
            system = f"{system}\n\n{queued.prompt.system}"
        turn = Turn(
            session=session,
            user=queued.user,
            provider=provider,
            model=info,
            system=system,
            # what the model sees: each earlier prompt with its answers, then this one (prompts
            # queued behind it are stored already but are not part of its conversation)
            history=_conversation(history, queued.user),
            tools=self._tools,
            disabled_tools=frozenset(k for k, v in queued.prompt.tools.items() if not v),
            approved=runner.approved,
        )
        try:
            last = await run_turn(turn, _Host(self, session), self._limits)
        except asyncio.CancelledError:
            for m in turn.messages:
                if m not in history:
                    history.append(m)
            raise
        for m in turn.messages:
            if m not in history:
                history.append(m)
        return last

    async def _fail_turn(
        self, runner: _Runner, user: Message, exc: AgentplexError | None
    ) -> Message:
        """An assistant message answering ``user`` with an error and no parts: no model
        (``exc``), or a turn aborted before it began (``exc`` None)."""
        session = runner.session
        error = (
            dict(ABORTED)
            if exc is None
            else {"name": "ProviderModelNotFoundError", "data": {"message": exc.message}}
        )
        now = now_ms()
        message = Message(
            id=new_id("msg"),
            session_id=session.id,
            role="assistant",
            created=now,
            completed=now,
            parent_id=user.id,
            model=user.model,
            agent=user.agent,
            error=error,
        )
        if exc is None:
            self.events.append(session.env_id, "session.error", session.id, error=error)
        async with self._db.write() as conn:
            await store.save_message(conn, message)
        if runner.history is not None:
            runner.history.append(message)
        self.events.append(
            session.env_id, "message.updated", session.id, message=message.snapshot()
        )
        if exc is not None:
            self.events.append(session.env_id, "session.error", session.id, error=error)
        return message

    def _answered(self, user: Message) -> None:
        """Mark a prompt as dealt with (answered, failed or dropped): a restart then leaves it
        alone. A prompt still unmarked after a crash gets an error answer at the next start."""
        if user.completed is None:
            user.completed = now_ms()
            self._writer.put(user)

    async def _aborted_result(self, runner: _Runner, queued: _Queued) -> Message:
        """What a prompt whose turn was aborted gets: the turn's last (aborted) message, or
        one made now when the turn was cancelled before it began."""
        for message in reversed(runner.history or []):
            if message.role == "assistant" and message.parent_id == queued.user.id:
                return message
        return await self._fail_turn(runner, queued.user, None)

    async def abort(self, env_id: str, session_id: str) -> bool:
        """End the running turn (and drop the queued ones) within a second; True always, as
        OpenCode answers (an unknown or idle session included)."""
        runner = self._runners.get(session_id)
        if runner is None or runner.session.env_id != env_id:
            return True
        self._cancel(runner, drop_queue=True)
        if runner.task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception, TimeoutError):
                await asyncio.wait_for(asyncio.shield(runner.task), 5)
        return True

    def _cancel(self, runner: _Runner, *, drop_queue: bool) -> None:
        current = runner.queue[0] if runner.queue else None
        if drop_queue:
            rest = runner.queue[1:]
            del runner.queue[1:]
            for queued in rest:
                self._answered(queued.user)  # dropped by the abort: it will not be answered
                # OpenCode answers a prompt dropped by an abort with the aborted turn's answer
                if current is not None:
                    current.done.add_done_callback(_forward(queued.done))
                elif not queued.done.done():
                    queued.done.cancel()
        for request in list(self._permissions.values()):
            if request.session_id == runner.session.id and not request.answer.done():
                request.answer.cancel()
        runner.abort_upto = runner.started
        if runner.turn is not None and not runner.turn.done():
            runner.turn.cancel()

    def status(self, env_id: str) -> dict[str, dict[str, Any]]:
        """Run status of the environment's busy sessions (idle ones are absent)."""
        return {k: dict(v) for k, v in self._status.get(env_id, {}).items()}

    def _set_status(self, env_id: str, session_id: str, status: Mapping[str, Any] | None) -> None:
        statuses = self._status.setdefault(env_id, {})
        if status is None:
            statuses.pop(session_id, None)
            self.events.append(env_id, "session.status", session_id, status={"type": "idle"})
        else:
            statuses[session_id] = dict(status)
            self.events.append(env_id, "session.status", session_id, status=dict(status))

    # -- permissions ----------------------------------------------------------------------

    async def _ask(
        self, session: Session, message: Message, part: Part, tool: str, pattern: str
    ) -> str:
        request = _PermissionRequest(
            new_id("per"),
            session.id,
            session.env_id,
            asyncio.get_running_loop().create_future(),
        )
        self._permissions[request.id] = request
        state = part.data.get("state", {})
        info = {
            "id": request.id,
            "type": tool,
            "pattern": pattern,
            "sessionID": session.id,
            "messageID": message.id,
            "callID": part.data.get("callID"),
            "title": f"{tool}: {pattern}",
            "metadata": {"input": state.get("input", {})},
            "time": {"created": now_ms()},
        }
        self.events.append(session.env_id, "permission.updated", session.id, extra=info)
        # the same request as OpenCode 1.x servers announce it (its v2 SDK reads this one)
        asked = {
            "id": request.id,
            "sessionID": session.id,
            "permission": tool,
            "patterns": [pattern],
            "metadata": dict(state.get("input", {})),
            "always": [pattern],
            "tool": {"messageID": message.id, "callID": part.data.get("callID")},
        }
        self.events.append(session.env_id, "permission.asked", session.id, extra=asked)
        try:
            return await request.answer
        finally:
            self._permissions.pop(request.id, None)

    async def reply_permission(
        self, env_id: str, session_id: str, permission_id: str, response: PermissionResponse
    ) -> None:
        """Answer a pending permission request: ``once``, ``always`` (this pattern, for the
        rest of the session) or ``reject``."""
        request = self._permissions.get(permission_id)
        if request is None or request.env_id != env_id or request.session_id != session_id:
            raise PermissionNotFound(f"Permission request not found: {shown_id(permission_id)}")
        if response not in ("once", "always", "reject"):
            raise BadRequest("response must be once, always or reject")
        if not request.answer.done():
            request.answer.set_result(response)
        self.events.append(
            env_id,
            "permission.replied",
            session_id,
            # the v1 SDK's names and the 1.x server's, together
            extra={
                "sessionID": session_id,
                "permissionID": permission_id,
                "response": response,
                "requestID": permission_id,
                "reply": response,
            },
        )

    # -- the session's sandbox --------------------------------------------------------------

    async def _sandbox(self, session: Session) -> str:
        lock = self._sandbox_locks.setdefault(session.id, asyncio.Lock())
        async with lock:
            if session.sandbox_id is not None:
                try:
                    record = await self._sandboxes.get(session.env_id, session.sandbox_id)
                except SandboxNotFound:
                    record = None
                if record is not None:
                    if record.status == "running":
                        return record.id
                    if record.status == "paused":
                        await self._sandboxes.resume(session.env_id, record.id)
                        return record.id
                    if record.status == "stopped":
                        await self._sandboxes.start_sandbox(session.env_id, record.id)
                        return record.id
            record, _token = await self._sandboxes.create(
                session.env_id,
                template=self._settings.template,
                timeout_seconds=None,
                internet_access=False,
                env_vars={},
            )
            session.sandbox_id = record.id
            await self._save_session(session)
            return record.id

    async def shell(
        self, env_id: str, session_id: str, command: str, *, agent: str = "build"
    ) -> Message:
        """Run ``command`` in the session's sandbox as the user (no model call): a synthetic
        user message and an assistant message holding the completed ``bash`` tool part."""
        if not command.strip():
            raise BadRequest("command must not be empty")
        session = await self._live(env_id, session_id)
        source = next((t for t in self._tools if any(s.name == "bash" for s in t.specs())), None)
        if source is None:
            raise BadRequest("No shell tool is available on this server")
        await self.prompt(
            env_id,
            session.id,
            Prompt(
                parts=[
                    PromptPart(
                        "text", "The following tool was executed by the user", synthetic=True
                    )
                ],
                agent=agent,
                no_reply=True,
            ),
        )
        runner = self._runners.get(session.id)
        history = runner.history if runner is not None and runner.history is not None else []
        user = history[-1] if history else None
        now = now_ms()
        message = Message(
            id=new_id("msg"),
            session_id=session.id,
            role="assistant",
            created=now,
            parent_id=user.id if user else None,
            agent=agent,
            model=session.model or self._default_ref(),
        )
        call_id = new_id("call")
        part = Part(
            new_id("prt"),
            session.id,
            message.id,
            "tool",
            {
                "callID": call_id,
                "tool": "bash",
                "state": {
                    "status": "running",
                    "input": {"command": command},
                    "time": {"start": now},
                },
            },
        )
        message.parts.append(part)
        self.events.append(env_id, "message.updated", session.id, message=message.snapshot())
        self.events.append(env_id, "message.part.updated", session.id, part=part.snapshot())
        host = _Host(self, session)

        async def sandbox() -> str:
            return await self._sandbox(session)

        async def progress(_output: str) -> None:
            return None

        from agentplex.core.ports import ToolContext

        result = await source.call(
            ToolContext(
                env_id,
                session.id,
                message.id,
                call_id,
                sandbox,
                progress,
                self._settings.tool_timeout_secs,
            ),
            "bash",
            {"command": command},
        )
        end = now_ms()
        if result.error is not None:
            part.data["state"] = {
                "status": "error",
                "input": {"command": command},
                "error": result.error,
                "time": {"start": now, "end": end},
            }
        else:
            part.data["state"] = {
                "status": "completed",
                "input": {"command": command},
                "output": result.output,
                "title": result.title or command,
                "metadata": dict(result.metadata),
                "time": {"start": now, "end": end},
            }
        message.completed = end
        message.finish = "stop"
        self.events.append(env_id, "message.part.updated", session.id, part=part.snapshot())
        self.events.append(env_id, "message.updated", session.id, message=message.snapshot())
        await host.save(message)
        if runner is not None and runner.history is not None:
            runner.history.append(message)
        return message

    # -- files of the session's workspace ----------------------------------------------

    async def _workspace_sandbox(self, env_id: str, session_id: str | None) -> str | None:
        if session_id is not None:
            return (await self.get(env_id, session_id)).sandbox_id
        candidates = [
            s for s in self._sessions.values() if s.env_id == env_id and s.sandbox_id is not None
        ]
        if not candidates:
            return None
        return max(candidates, key=lambda s: s.last_activity).sandbox_id

    async def list_files(
        self, env_id: str, session_id: str | None, path: str
    ) -> builtins.list[FileEntry]:
        """Entries of ``path`` (relative to the workspace) in the session's sandbox; empty
        when the session has no sandbox yet. ``session_id`` None: the environment's most
        recently active session with a sandbox."""
        absolute = _workspace_path(path)
        sandbox_id = await self._workspace_sandbox(env_id, session_id)
        if sandbox_id is None:
            return []
        response = await self._sandboxes.request(
            sandbox_id, "GET", "/files/list", params={"path": absolute}, timeout=30
        )
        if response.status == 404:
            return []
        if response.status >= 400:
            raise BadRequest(_data_plane_error(response.body, path))
        entries = []
        for f in orjson.loads(response.body).get("files", []):
            full = str(f.get("path") or posixpath.join(absolute, str(f.get("name", ""))))
            entries.append(
                FileEntry(
                    name=str(f.get("name", posixpath.basename(full))),
                    path=posixpath.relpath(full, WORKSPACE),
                    absolute=full,
                    type="directory" if f.get("is_directory") else "file",
                    size=int(f.get("size") or 0),
                )
            )
        return sorted(entries, key=lambda e: (e.type != "directory", e.name))

    async def read_file(self, env_id: str, session_id: str | None, path: str) -> str:
        """A text file of the session's workspace; empty when missing (as OpenCode)."""
        absolute = _workspace_path(path)
        sandbox_id = await self._workspace_sandbox(env_id, session_id)
        if sandbox_id is None:
            return ""
        response = await self._sandboxes.request(
            sandbox_id, "GET", "/files/read", params={"path": absolute}, timeout=30
        )
        if response.status == 404:
            return ""
        if response.status >= 400:
            raise BadRequest(_data_plane_error(response.body, path))
        return str(orjson.loads(response.body).get("content", ""))

    # -- models -------------------------------------------------------------------------------

    def providers(self) -> ProviderListing:
        default = {p.id: p.models()[0].id for p in self._providers.values() if p.models()}
        return ProviderListing(tuple(self._providers.values()), default, self._default_ref())

    def _default_ref(self) -> ModelRef | None:
        """The model a prompt gets when neither it nor its session names one (None: there
        is no model at all)."""
        try:
            provider, model_id = resolve_model(
                list(self._providers.values()), None, self._settings.model
            )
        except (ModelNotConfigured, BadRequest):
            return None
        return ModelRef(provider.id, model_id)

    def _resolve(self, ref: ModelRef | None) -> tuple[ModelProvider, ModelInfo]:
        """The provider and model answering ``ref`` (the default when None).
        ModelNotConfigured when there is none; BadRequest for one not offered."""
        spec = None if ref is None else f"{ref.provider_id}:{ref.model_id}"
        provider, model_id = resolve_model(
            list(self._providers.values()), spec, self._settings.model
        )
        info = next((m for m in provider.models() if m.id == model_id), None)
        return provider, info or ModelInfo(model_id, model_id)

    # -- storage and housekeeping ---------------------------------------------------------

    async def _save_session(self, session: Session) -> None:
        async with self._db.write() as conn:
            await store.save_session(conn, session)

    async def _sweep(self) -> None:
        interval = max(0.05, min(30.0, self._settings.idle_after_secs / 2))
        while True:
            await asyncio.sleep(interval)
            try:
                await self._sweep_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("session sweep failed")

    def _busy(self, session_id: str) -> bool:
        runner = self._runners.get(session_id)
        return runner is not None and (
            bool(runner.queue)
            or runner.enqueuing > 0
            or (runner.task is not None and not runner.task.done())
        )

    async def _sweep_once(self) -> None:
        now = now_ms()
        async with self._db.read() as conn:
            to_idle = await store.quiet_sessions(
                conn, status="active", before_ms=now - self._settings.idle_after_secs * 1000
            )
            expired = [
                s
                for status in ("active", "idle")
                for s in await store.quiet_sessions(
                    conn, status=status, before_ms=now - self._settings.session_timeout_secs * 1000
                )
            ]
        expired_ids = {s.id for s in expired}
        for stored in to_idle:
            session = self._sessions.get(stored.id, stored)
            if self._busy(session.id) or session.id in expired_ids:
                continue
            if session.last_activity >= now - self._settings.idle_after_secs * 1000:
                continue
            session.status = "idle"
            await self._save_session(session)
            self.events.append(
                session.env_id, "session.updated", session.id, session=_snap(session)
            )
        for stored in expired:
            if self._busy(stored.id):
                continue
            with contextlib.suppress(SessionTerminated, SessionNotFound):
                await self.delete(stored.env_id, stored.id)


class _WriteBehind:
    """Stores messages and sessions shortly after they change, many in one transaction.

    A record put here is written within `DELAY` seconds, or at once by `flush` (a turn's end,
    an accepted prompt): a quick turn's prompt, steps and session totals share one write,
    and a long one's records still reach the database while it runs (so a restart finds and
    closes them). Each record is stored in its state at the time of the write."""

    DELAY = 0.05

    def __init__(self, db: Database) -> None:
        self._db = db
        self._pending: dict[tuple[str, str], Message | Session] = {}
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    def put(self, item: Message | Session) -> None:
        kind = "message" if isinstance(item, Message) else "session"
        self._pending[(kind, item.id)] = item
        if self._timer is None and (self._task is None or self._task.done()):
            self._timer = asyncio.get_running_loop().call_later(self.DELAY, self._start)

    def _start(self) -> None:
        self._timer = None
        if self._pending and (self._task is None or self._task.done()):
            self._task = asyncio.create_task(self._drain(), name="session-writer")

    async def flush(self) -> None:
        """Return once everything put so far is stored."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while True:
            if self._task is not None and not self._task.done():
                await asyncio.shield(self._task)
                continue
            if not self._pending:
                return
            self._task = asyncio.create_task(self._drain(), name="session-writer")

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, {}
            try:
                async with self._db.write() as conn:
                    await store.save_messages(
                        conn, [i for i in batch.values() if isinstance(i, Message)]
                    )
                    for item in batch.values():
                        if isinstance(item, Session):
                            await store.save_session(conn, item)
            except Exception:
                # one bad record must not hold the others back: store them one by one
                for (kind, item_id), item in batch.items():
                    try:
                        async with self._db.write() as conn:
                            if isinstance(item, Message):
                                await store.save_message(conn, item)
                            else:
                                await store.save_session(conn, item)
                    except Exception:
                        log.exception("could not store %s %s", kind, item_id)
        if self._pending and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.DELAY, self._start)


class _Host:
    """The agent loop's view of the service, for one session."""

    __slots__ = ("_service", "_session")

    def __init__(self, service: SessionService, session: Session) -> None:
        self._service = service
        self._session = session

    def emit(self, type: str, session_id: str, **fields: Any) -> None:
        self._service.events.append(self._session.env_id, type, session_id, **fields)

    async def save(self, message: Message) -> None:
        self._service._writer.put(message)

    def save_soon(self, message: Message) -> None:
        self._service._writer.put(message)

    def set_status(self, session_id: str, status: Mapping[str, Any] | None) -> None:
        self._service._set_status(self._session.env_id, session_id, status)

    async def ask_permission(
        self, session: Session, message: Message, part: Part, tool: str, pattern: str
    ) -> str:
        return await self._service._ask(session, message, part, tool, pattern)

    async def sandbox(self, session: Session) -> str:
        return await self._service._sandbox(session)


MAX_PROMPT_CHARS = 1024 * 1024
"""The most text one prompt may carry (its parts together): well past any model's context."""


def shown_id(value: str) -> str:
    """An id as an error message quotes it: cut short, so a huge one is not echoed back."""
    return value if len(value) <= 80 else value[:80] + "..."


def _check_text(name: str, value: str, limit: int) -> None:
    if len(value) > limit:
        raise BadRequest(f"{name} is too long: at most {limit} characters")
    if "\x00" in value:
        raise BadRequest(f"{name} must not contain NUL characters")


def check_prompt(prompt: Prompt) -> None:
    """BadRequest unless ``prompt`` can be answered: parts present, known types, some text,
    no NUL, at most `MAX_PROMPT_CHARS`."""
    size = sum(len(p.text) + len(p.url) for p in prompt.parts) + len(prompt.system or "")
    if size > MAX_PROMPT_CHARS:
        raise BadRequest(
            f"The prompt is too large ({size} characters; at most {MAX_PROMPT_CHARS}): "
            "send large content as files in the session's workspace"
        )
    if any("\x00" in p.text or "\x00" in p.url for p in prompt.parts) or "\x00" in (
        prompt.system or ""
    ):
        raise BadRequest("The prompt must not contain NUL characters")
    if not prompt.parts:
        raise BadRequest("The prompt has no parts: send at least one text part")
    for part in prompt.parts:
        if part.type not in ("text", "file"):
            raise BadRequest(f"Unknown part type {part.type!r}: use text or file")
    if not any((p.type == "text" and p.text.strip()) or p.type == "file" for p in prompt.parts):
        raise BadRequest("The prompt is empty: send some text")


def _end_interrupted(message: Message) -> None:
    """Close a message whose turn was running when the server stopped."""
    end = now_ms()
    for part in message.parts:
        if part.type == "tool" and part.data.get("state", {}).get("status") in (
            "pending",
            "running",
        ):
            state = part.data["state"]
            part.data["state"] = {
                "status": "error",
                "input": state.get("input", {}),
                "error": "The server stopped while this tool was running",
                "time": {"start": state.get("time", {}).get("start", end), "end": end},
            }
        elif part.type in ("text", "reasoning"):
            part.data.setdefault("time", {}).setdefault("end", end)
    message.completed = end
    message.error = {
        "name": "UnknownError",
        "data": {
            "message": "The server stopped while this message was being "
            "answered; send the prompt again"
        },
    }


def _conversation(history: list[Message], user: Message) -> list[Message]:
    """The messages a turn answering ``user`` builds on, in conversation order: each earlier
    prompt followed by its answers, then ``user``. Prompts stored after it (queued behind the
    turn) are left out, whatever order the history holds them in."""
    replies: dict[str, list[Message]] = {}
    prompts = {m.id for m in history if m.role == "user"}
    for m in history:
        if m.role == "assistant" and m.parent_id in prompts:
            replies.setdefault(m.parent_id or "", []).append(m)
    out: list[Message] = []
    for m in history:
        if m.role == "user":
            out.append(m)
            out.extend(replies.get(m.id, ()))
            if m.id == user.id:
                break
        elif m.parent_id not in prompts:
            out.append(m)  # an answer whose prompt is not in this history (kept in place)
    return out


def _settle(queued: _Queued, result: Message | BaseException) -> None:
    if queued.done.done():
        return
    if isinstance(result, BaseException):
        queued.done.set_exception(result)
    else:
        queued.done.set_result(result)


def _unanswered(prompt: Message) -> Message:
    """The answer a prompt gets when the server stopped before its turn began."""
    now = now_ms()
    return Message(
        id=new_id("msg"),
        session_id=prompt.session_id,
        role="assistant",
        created=now,
        completed=now,
        parent_id=prompt.id,
        model=prompt.model,
        agent=prompt.agent,
        error={
            "name": "UnknownError",
            "data": {
                "message": "The server stopped before this prompt was answered; send it again"
            },
        },
    )


def _with_running(runner: _Runner) -> list[Message]:
    return list(runner.history or [])


def _forward(target: asyncio.Future[Message]) -> Any:
    def copy(source: asyncio.Future[Message]) -> None:
        if target.done():
            return
        if source.cancelled():
            target.cancel()
        elif source.exception() is not None:
            target.set_exception(source.exception())  # type: ignore[arg-type]
        else:
            target.set_result(source.result())

    return copy


def _consume_result(future: asyncio.Future[Message]) -> None:
    if not future.cancelled():
        future.exception()  # nobody awaits prompt_async's turn: mark its error as seen


def _snap(session: Session) -> Session:
    return session.snapshot()


def _iso(ms: int) -> str:
    from datetime import UTC, datetime

    return (
        datetime.fromtimestamp(ms / 1000, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def _workspace_path(path: str) -> str:
    if "\x00" in path:
        raise BadRequest("path must not contain NUL")
    joined = posixpath.normpath(posixpath.join(WORKSPACE, path or "."))
    if joined != WORKSPACE and not joined.startswith(WORKSPACE + "/"):
        raise BadRequest(f"path {path!r} is outside the session's workspace")
    return joined


def _data_plane_error(body: bytes, path: str) -> str:
    try:
        message = orjson.loads(body).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        message = None
    return f"Cannot read {path!r}: {message or 'the sandbox refused'}"
