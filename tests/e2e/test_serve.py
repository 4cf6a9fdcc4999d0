"""`agentplex serve` as a user starts it: binding rules, configuration, shutdown."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Cli, ServeFactory, free_port

pytestmark = pytest.mark.e2e


def test_without_keys_it_serves_only_loopback_and_says_so(
    serve: ServeFactory, cli: Cli, data_dir: Path
) -> None:
    server = serve()

    assert "authentication is OFF" in server.stderr
    assert "127.0.0.1" in server.stderr
    assert "agentplex auth token" in server.stderr
    with server.client() as client:
        assert client.get("/api/v1/logs").status_code == 200

        # The first key turns authentication on in the running server.
        cli("auth", "token", "--data-dir", str(data_dir))
        deadline = time.monotonic() + 4.0
        while client.get("/api/v1/logs").status_code != 401:
            assert time.monotonic() < deadline, "auth stayed off after a key was created"
            time.sleep(0.1)
    server.stop()


def test_public_address_without_keys_is_refused(cli: Cli, data_dir: Path) -> None:
    port = free_port("0.0.0.0")

    result = cli(
        "serve",
        "--host",
        "0.0.0.0",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        check=False,
    )

    assert result.returncode != 0
    assert "refusing to serve on 0.0.0.0" in result.stderr
    assert "agentplex auth token" in result.stderr
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/health/live", timeout=1.0)


@pytest.mark.parametrize("variable", ["AGENTPLEX_API_KEY", "HOTPLEX_API_KEY"])
def test_key_from_the_environment_allows_a_public_address(
    serve: ServeFactory, variable: str
) -> None:
    key = "e2e-environment-key-0123456789"

    server = serve(env={variable: key}, host="0.0.0.0")

    assert "authentication is OFF" not in server.stderr
    with server.client() as client:
        assert client.get("/api/v1/logs").status_code == 401
        assert client.get("/api/v1/logs", headers={"X-API-Key": key}).status_code == 200
        assert (
            client.get("/api/v1/logs", headers={"Authorization": f"Bearer {key}"}).status_code
            == 200
        )
    server.stop()


def test_toml_config_is_honoured_and_environment_beats_it(
    serve: ServeFactory, tmp_path: Path, new_key: Callable[..., str]
) -> None:
    toml_port, env_port = free_port(), free_port()
    config = tmp_path / "agentplex.toml"
    config.write_text(f'[server]\nport = {toml_port}\n\n[rate_limit]\ndefault = "7/second"\n')
    key = new_key()

    # No --port flag: TOML names one port, AGENTPLEX_PORT another, and the variable must win.
    server = serve(
        env={"AGENTPLEX_PORT": str(env_port)},
        port=env_port,
        port_flag=False,
        args=("--config", str(config)),
    )

    with server.client(key) as client:
        response = client.get("/api/v1/logs")
    assert response.status_code == 200
    assert response.headers["X-RateLimit-Limit"] == "7"
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{toml_port}/health/live", timeout=1.0)
    server.stop()


def test_sigterm_with_a_stream_open_exits_cleanly_within_the_grace_period(
    serve: ServeFactory, new_key: Callable[..., str]
) -> None:
    grace = 5.0
    key = new_key()
    server = serve(env={"AGENTPLEX_GRACEFUL_SHUTDOWN_SECONDS": str(grace)})

    with server.client(key) as client, client.stream("GET", "/api/v1/logs/stream") as stream:
        assert stream.status_code == 200
        lines = stream.iter_lines()
        assert next(lines).startswith(("id:", "event:", "data:", ":"))
        started = time.monotonic()
        server.terminate()
        # The server must end the stream itself rather than wait for the client to go.
        # (How it ends is not asserted here: today the body is cut off without its last
        # chunk, which clients report as a protocol error.)
        with contextlib.suppress(httpx.RemoteProtocolError):
            for _line in lines:
                assert time.monotonic() - started < grace, "the stream outlived the grace period"
    server.wait(grace)
    assert time.monotonic() - started < grace
    assert "agentplex stopped" in server.stderr
