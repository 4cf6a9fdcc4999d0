"""The SDK's registry and run calls, in-process (no sandbox)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from agentplex import sdk
from agentplex.sdk import Entry


@pytest.fixture(autouse=True)
def clean_registry() -> Iterator[None]:
    saved = list(sdk._REGISTRY)
    sdk._REGISTRY.clear()
    yield
    sdk._REGISTRY[:] = saved
    sdk._channel = None
    sdk._current = None


def signup(event: dict[str, Any]) -> str:
    return "signed"


def nightly() -> str:
    return "night"


def add(a: int, b: int) -> int:
    return a + b


def test_decorators_register_and_return_the_function_unchanged() -> None:
    assert sdk.on_event("user.signup")(signup) is signup
    assert sdk.schedule("0  0 * * *", tz="Europe/Paris")(nightly) is nightly
    assert sdk.function(add) is add
    assert sdk.function()(add) is add  # with parentheses too; declared once
    module = __name__
    assert sdk.registry() == [
        Entry("event", module, "signup", event="user.signup"),
        Entry("schedule", module, "nightly", cron="0 0 * * *", tz="Europe/Paris"),
        Entry("function", module, "add"),
    ]
    assert [e.to_json() for e in sdk.registry()] == [
        {"kind": "event", "module": module, "name": "signup", "event": "user.signup"},
        {
            "kind": "schedule",
            "module": module,
            "name": "nightly",
            "cron": "0 0 * * *",
            "tz": "Europe/Paris",
        },
        {"kind": "function", "module": module, "name": "add"},
    ]
    assert sdk.registry()[0].target == f"{module}:signup"
    assert signup({}) == "signed" and add(1, 2) == 3


def test_schedule_defaults_to_utc() -> None:
    sdk.schedule("*/5 * * * *")(nightly)
    assert sdk.registry()[0].tz == "UTC"


def test_misused_decorators_say_how_to_use_them() -> None:
    with pytest.raises(TypeError, match=r"@on_event\(\"user.signup\"\)"):
        sdk.on_event(signup)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="cron expression"):
        sdk.schedule(nightly)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="tz"):
        sdk.schedule("0 0 * * *", tz="")
    with pytest.raises(TypeError, match="decorates a function"):
        sdk.function(42)  # type: ignore[call-overload]

    def local() -> None:
        pass

    with pytest.raises(TypeError, match="top level of a module"):
        sdk.function(local)
    assert sdk.registry() == []


def test_outside_a_run_emit_prints_and_the_rest_does_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    sdk.emit("hello")
    sdk.emit({"a": 1})
    sdk.capture("x", 1)
    sdk.var("y", 2)
    sdk.publish("user.signup", {"email": "a@b.c"})
    assert capsys.readouterr().out == 'hello\n{"a": 1}\n'
    assert sdk.current_run() is None


def test_inside_a_run_calls_go_to_the_channel() -> None:
    sent: list[tuple[str, dict[str, Any]]] = []
    sdk._channel = lambda kind, payload: sent.append((kind, payload))
    sdk._current = {"run_id": "r1", "run_type": "call", "function": "m:f"}
    sdk.emit("text")
    sdk.emit([1, 2])
    sdk.emit("[1]", data_type="json")
    sdk.capture("email", "a@b.c", {"k": 1})
    sdk.var("n", 2)
    sdk.publish("user.welcomed", {"id": 1})
    assert sent == [
        ("data", {"value": "text", "data_type": "text"}),
        ("data", {"value": [1, 2], "data_type": "json"}),
        ("data", {"value": "[1]", "data_type": "json"}),
        ("var", {"name": "email", "value": "a@b.c", "meta": {"k": 1}}),
        ("var", {"name": "n", "value": 2, "meta": None}),
        ("publish", {"event_type": "user.welcomed", "event_data": {"id": 1}}),
    ]
    current = sdk.current_run()
    assert current == {"run_id": "r1", "run_type": "call", "function": "m:f"}
    current["run_id"] = "changed"  # a copy
    assert sdk.current_run() == {"run_id": "r1", "run_type": "call", "function": "m:f"}


def test_values_must_be_json() -> None:
    sdk._channel = lambda kind, payload: None
    with pytest.raises(TypeError, match="emit's value must be JSON-serialisable"):
        sdk.emit({1, 2})
    with pytest.raises(TypeError, match="JSON-serialisable"):
        sdk.emit(float("nan"))
    with pytest.raises(TypeError, match=r"capture\('x'\)'s value"):
        sdk.capture("x", object())
    with pytest.raises(TypeError, match="meta is a dict"):
        sdk.capture("x", 1, meta=[1])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="name string"):
        sdk.capture("", 1)
    with pytest.raises(TypeError, match="event_data"):
        sdk.publish("e", {"when": object()})
    with pytest.raises(TypeError, match="event type string"):
        sdk.publish("", {})
    with pytest.raises(ValueError, match="data_type"):
        sdk.emit("x", data_type="xml")
    with pytest.raises(TypeError, match="needs a string"):
        sdk.emit(1, data_type="text")
    json.dumps(sdk.registry() and [e.to_json() for e in sdk.registry()])
