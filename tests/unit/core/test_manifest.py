"""agentplex.json: what a build declares, and every mistake named by its entry."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agentplex.core.manifest import Manifest, parse_function, parse_manifest
from agentplex.errors import BadRequest

FILES = {
    "hello/__init__.py",
    "hello/handlers.py",
    "hello/math.py",
    "tasks.py",
    "pkg/sub/__init__.py",
}


def parse(data: Any) -> Manifest:
    return parse_manifest(json.dumps(data).encode(), FILES)


def refused(data: Any) -> str:
    with pytest.raises(BadRequest) as caught:
        parse(data)
    return caught.value.message


def test_a_full_manifest_parses_and_round_trips() -> None:
    manifest = parse(
        {
            "version": 1,
            "name": "hello",
            "handlers": [{"event": "user.signup", "function": "hello.handlers:on_signup"}],
            "schedules": [
                {"cron": "0  0 * * *", "tz": "Europe/Paris", "function": "tasks:nightly"},
                {"cron": "*/5 * * * * *", "function": "pkg.sub:tick"},
            ],
            "functions": ["hello.math:add", {"function": "::hello::math/sub"}],
        }
    )
    [handler] = manifest.handlers
    assert (handler.event, handler.function.ns, handler.function.var) == (
        "user.signup",
        "::hello::handlers",
        "on_signup",
    )
    assert [(s.cron, s.tz) for s in manifest.schedules] == [
        ("0 0 * * *", "Europe/Paris"),
        ("*/5 * * * * *", "UTC"),
    ]
    assert [f.target for f in manifest.functions] == ["hello.math:add", "hello.math:sub"]
    assert Manifest.from_json(manifest.to_json()) == manifest


def test_function_names_in_both_notations() -> None:
    assert parse_function("a.b:fn") == parse_function("::a::b/fn")
    assert parse_function("::a::b/fn").files() == ("a/b.py", "a/b/__init__.py")
    for bad in ("a.b", "a/b:fn", "::a::b", "a..b:fn", "a.b:fn()", "1a:fn"):
        with pytest.raises(ValueError, match=r"module\.path:function"):
            parse_function(bad)


def test_every_mistake_is_named_by_its_entry() -> None:
    message = refused(
        {
            "handler": [],
            "handlers": [
                {"event": "user.signup", "function": "hello.missing:fn"},
                {"event": "bad event!", "function": "hello.handlers:x"},
                {"event": "hot:call", "function": "hello.handlers:x"},
            ],
            "schedules": [
                {"cron": "61 * * * *", "function": "tasks:a"},
                {"cron": "0 0 * * *", "tz": "Mars/Olympus", "function": "tasks:a"},
                {"cron": "0 0 *", "function": "tasks:a"},
            ],
            "functions": ["nope"],
        }
    )
    assert "handler: unknown key" in message
    assert "handlers[0].function: module hello.missing is not in the archive" in message
    assert "handlers[1].event" in message and "handlers[2].event" in message
    assert "schedules[0].cron: '61 * * * *' is not a valid cron expression" in message
    assert "schedules[1].tz: 'Mars/Olympus' is not a known time zone" in message
    assert "schedules[2].cron" in message and "3 fields" in message
    assert "functions[0]" in message


@pytest.mark.parametrize(
    ("raw", "what"),
    [(b"{not json", "not valid JSON"), (b"[]", "JSON object"), (b"\xff\xfe", "not valid JSON")],
)
def test_a_manifest_that_is_not_an_object(raw: bytes, what: str) -> None:
    with pytest.raises(BadRequest, match=what):
        parse_manifest(raw, FILES)


def test_duplicates_and_types() -> None:
    dup = {"event": "a.b", "function": "tasks:x"}
    assert "repeats the handler" in refused({"handlers": [dup, dup]})
    assert "must be a list" in refused({"schedules": {}})
    assert "must be an object" in refused({"handlers": ["tasks:x"]})
    assert "version" in refused({"version": 2})
    tz_dir = {"schedules": [{"cron": "0 0 * * *", "tz": "America", "function": "tasks:x"}]}
    assert "not a known time zone" in refused(tz_dir)
    tz_path = {
        "schedules": [{"cron": "0 0 * * *", "tz": "../../etc/passwd", "function": "tasks:x"}]
    }
    assert "not a known time zone" in refused(tz_path)


def test_timeouts_are_per_function_and_checked() -> None:
    manifest = parse(
        {
            "handlers": [{"event": "a", "function": "hello.handlers:on_a", "timeout": 5}],
            "schedules": [{"cron": "* * * * *", "function": "tasks:tick", "timeout": 0.5}],
            "functions": [{"function": "hello.math:add", "timeout": 30}, "hello.math:sub"],
        }
    )
    assert manifest.timeouts == {"hello.handlers:on_a": 5, "tasks:tick": 0.5, "hello.math:add": 30}
    assert manifest.timeout_of("hello.math:sub") is None
    assert Manifest.from_json(manifest.to_json()) == manifest

    message = refused(
        {
            "handlers": [
                {"event": "a", "function": "hello.handlers:on_a", "timeout": 5},
                {"event": "b", "function": "hello.handlers:on_a", "timeout": 6},
            ],
            "functions": [
                {"function": "hello.math:add", "timeout": 0},
                {"function": "hello.math:sub", "timeout": 90000},
                {"function": "tasks:x", "timeout": "10"},
            ],
        }
    )
    assert "handlers[1].timeout: hello.handlers:on_a is given two timeouts" in message
    assert "functions[0].timeout: 0 is not a number of seconds above 0" in message
    assert "functions[1].timeout: 90000 s is over the limit" in message
    assert "functions[2].timeout: '10' is not a number" in message


def test_entry_points_declared_in_code_carry_their_timeouts() -> None:
    from agentplex.core.manifest import from_declarations

    manifest = from_declarations(
        [
            {"kind": "event", "module": "m", "name": "f", "event": "e", "timeout": 2},
            {"kind": "function", "module": "m", "name": "g"},
        ]
    )
    assert manifest.timeouts == {"m:f": 2}
    with pytest.raises(BadRequest, match="above 0"):
        from_declarations([{"kind": "function", "module": "m", "name": "g", "timeout": -1}])
