"""The Python OpenCode SDK `opencode-ai` (0.1.0a36), unchanged, against agentplex.

The SDK predates OpenCode 1.x: `session.chat` sends the model as top-level `modelID` /
`providerID` and reads the assistant message's fields from the top level of the answer, and
its SSE decoder fails on a frame without `data:` once it has seen an `id:` line
(docs/opencode-protocol.md section 6). agentplex answers both generations; these tests use the
SDK the way its README shows, against agentplex with auth on and the fake model on loopback.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import opencode_ai
import pytest

from agentplex.settings import load_settings
from tests.compat.conftest import API_KEY
from tests.compat.opencode_reference import HELLO, fake_model
from tests.conftest import BACKENDS, LiveServer, fresh_database

pytestmark = pytest.mark.timeout(180)

SECRET = "sk-compat-python-sdk-secret"
HEARTBEAT = 0.3  # seconds: short, so a test sees keep-alives between events


@dataclass
class Server:
    url: str

    def client(self, **kwargs: Any) -> opencode_ai.Opencode:
        return opencode_ai.Opencode(
            base_url=self.url,
            default_headers={"Authorization": f"Bearer {API_KEY}"},
            max_retries=0,
            **kwargs,
        )


@pytest.fixture(scope="module", params=BACKENDS)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    tmp: Path = tmp_path_factory.mktemp("opencode-python")
    with (
        pytest.MonkeyPatch.context() as mp,
        fresh_database(request.param, tmp) as url,
        fake_model() as model_url,
    ):
        for name in list(os.environ):  # a developer's own settings must not leak in
            if name.startswith(("AGENTPLEX_", "OPENAI_", "ANTHROPIC_")):
                mp.delenv(name)
        mp.setenv("OPENAI_BASE_URL", model_url)
        mp.setenv("OPENAI_API_KEY", SECRET)
        mp.setenv("AGENTPLEX_MODEL", "openai:fake-model")
        settings = load_settings(
            None,
            {
                "server": {"data_dir": tmp / "data"},
                "database": {"url": url},
                "sandbox": {"pool_size": 0},
                "auth": {"api_key": API_KEY},
                "streams": {"keepalive_seconds": HEARTBEAT, "heartbeat_seconds": HEARTBEAT},
            },
        )
        with LiveServer(settings) as live:
            yield Server(live.url)


@pytest.fixture
def client(server: Server) -> Iterator[opencode_ai.Opencode]:
    with server.client() as c:
        yield c


def fake_provider(client: opencode_ai.Opencode) -> str:
    """The provider id agentplex lists the fake model under."""
    listing = client.app.providers()
    for provider in listing.providers:
        if "fake-model" in provider.models:
            return provider.id
    raise AssertionError(f"no provider offers fake-model: {listing}")


def session_of(event: dict[str, Any]) -> str | None:
    props = event.get("properties") or {}
    for holder in (props, props.get("info") or {}, props.get("part") or {}):
        if isinstance(holder, dict) and holder.get("sessionID"):
            return str(holder["sessionID"])
    return None


def test_sessions_create_list_delete(client: opencode_ai.Opencode) -> None:
    session = client.session.create()
    assert session.id.startswith("ses_") and session.title and session.version
    assert session.time.created > 0
    assert session.id in [s.id for s in client.session.list()]
    assert client.session.delete(session.id) is True
    assert session.id not in [s.id for s in client.session.list()]


def test_chat_answers_the_assistant_message(client: opencode_ai.Opencode) -> None:
    session = client.session.create()
    provider = fake_provider(client)
    answer = client.session.chat(
        session.id,
        model_id="fake-model",
        provider_id=provider,
        parts=[{"type": "text", "text": "Hello there"}],
    )
    # the 0.1 SDK reads these from the top level of the answer
    assert answer.role == "assistant"
    assert answer.id.startswith("msg_") and answer.session_id == session.id
    assert (answer.api_model_id, answer.provider_id) == ("fake-model", provider)
    assert answer.time.completed and answer.tokens.output > 0
    assert answer.error is None

    messages = client.session.messages(session.id)
    assert [m.info.role for m in messages] == ["user", "assistant"]
    said = [p.text for p in messages[1].parts if p.type == "text"]
    assert said == [HELLO]
    assert [p.text for p in messages[0].parts if p.type == "text"] == ["Hello there"]


def test_abort_and_delete(server: Server, client: opencode_ai.Opencode) -> None:
    session = client.session.create()
    provider = fake_provider(client)
    answers: list[Any] = []

    def slow() -> None:
        with server.client() as own:
            answers.append(
                own.session.chat(
                    session.id,
                    model_id="fake-model",
                    provider_id=provider,
                    parts=[{"type": "text", "text": "Answer SLOW please"}],
                )
            )

    thread = threading.Thread(target=slow, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # wait until the turn runs
        if session.id in client.get("/session/status", cast_to=dict[str, object]):
            break
        time.sleep(0.1)
    time.sleep(0.5)
    started = time.monotonic()
    assert client.session.abort(session.id) is True
    thread.join(10)
    took = time.monotonic() - started
    assert answers, "the aborted chat call did not return"
    assert answers[0].role == "assistant"
    said = "".join(p.get("text", "") for p in getattr(answers[0], "parts", None) or [])
    assert answers[0].error is not None, f"not aborted after {took:.1f}s; it said {said!r}"
    assert answers[0].error.name == "MessageAbortedError"
    assert took < 1.5, f"the aborted chat call returned {took:.1f}s after the abort"
    assert client.session.delete(session.id) is True


def test_providers_and_config(client: opencode_ai.Opencode) -> None:
    listing = client.app.providers()
    provider = fake_provider(client)
    assert listing.default.get(provider) == "fake-model"
    raw = client.app.with_raw_response.providers().http_response.text
    assert "apiKey" not in raw and SECRET not in raw
    config = client.config.get()
    assert "apiKey" not in config.model_dump_json(by_alias=True)
    assert SECRET not in client.config.with_raw_response.get().http_response.text


def test_event_list_reads_a_turn_across_keep_alives(
    server: Server, client: opencode_ai.Opencode
) -> None:
    """`event.list()` iterates frames with ids and heartbeats without a JSONDecodeError."""
    session = client.session.create()
    provider = fake_provider(client)
    seen: list[tuple[str, str | None]] = []
    failure: list[BaseException] = []
    done = threading.Event()

    def read() -> None:
        try:
            with server.client(timeout=60) as own:
                stream = own.event.list()
                try:
                    for event in stream:
                        sid = session_of(event.to_dict())
                        seen.append((event.type, sid))
                        if event.type == "session.idle" and sid == session.id:
                            return
                finally:
                    stream.close()
        except BaseException as exc:
            failure.append(exc)
        finally:
            done.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    time.sleep(HEARTBEAT * 4)  # keep-alives before the turn
    client.session.chat(
        session.id,
        model_id="fake-model",
        provider_id=provider,
        parts=[{"type": "text", "text": "Hello there"}],
    )
    assert done.wait(30), f"the stream never showed session.idle; saw {seen[-10:]}"
    assert not failure, f"event.list() failed: {failure[0]!r}"
    types = [t for t, _ in seen]
    assert types[0] == "server.connected"
    assert types.count("server.heartbeat") >= 2, types
    ours = [t for t, sid in seen if sid == session.id]
    assert "message.updated" in ours and "message.part.updated" in ours
    assert ours[-1] == "session.idle"
