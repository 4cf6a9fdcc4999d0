"""``POST /execute/async``: the result of an execution POSTed to the caller's callback URL."""

from __future__ import annotations

import hashlib
import hmac
import json
import queue
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from tests.conftest import LiveServer, SettingsFactory


class Receiver:
    """A loopback HTTP server that records the callbacks it gets."""

    def __init__(self) -> None:
        self.calls: queue.Queue[tuple[dict[str, str], bytes]] = queue.Queue()
        calls = self.calls

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                calls.put(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook?t=1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def _sandbox(http: httpx.Client) -> dict:
    created = http.post("/v1/sandboxes", json={"template_name": "python"})
    assert created.status_code == 200, created.text
    return created.json()


def test_the_result_is_posted_signed_to_the_callback(
    make_settings: SettingsFactory, receiver: Receiver
) -> None:
    settings = make_settings(sandbox={"pool_size": 1, "callback_allow_private": True})
    with LiveServer(settings) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        sandbox = _sandbox(http)
        started = http.post(
            f"{sandbox['public_host']}/execute/async",
            json={
                "code": "import time; time.sleep(0.3); print('done')",
                "language": "python",
                "timeout": 30,
                "callback_url": receiver.url,
                "callback_headers": {"Authorization": "Bearer hook-secret"},
                "callback_signature_secret": "s3cret",
            },
        )
        assert started.status_code == 202, started.text
        answer = started.json()
        assert answer["status"] == "queued" and answer["callback_url"] == receiver.url
        headers, body = receiver.calls.get(timeout=20)
        result = json.loads(body)
        assert result["execution_id"] == answer["execution_id"]
        assert result["status"] == "completed" and result["stdout"] == "done\n"
        assert result["exit_code"] == 0 and result["sandbox_id"] == sandbox["id"]
        assert headers["authorization"] == "Bearer hook-secret"
        stamp = headers["x-hopx-timestamp"]
        expected = hmac.new(b"s3cret", stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        assert headers["x-hopx-signature"] == f"sha256={expected}"
        failing = http.post(
            f"{sandbox['public_host']}/execute/async",
            json={"code": "1/0", "callback_url": receiver.url},
        )
        assert failing.status_code == 202
        _headers, body = receiver.calls.get(timeout=20)
        result = json.loads(body)
        assert result["status"] == "failed" and "ZeroDivisionError" in result["stderr"]
        http.delete(f"/v1/sandboxes/{sandbox['id']}")


def test_callbacks_into_the_servers_own_network_are_refused(
    live_server: LiveServer, receiver: Receiver
) -> None:
    with httpx.Client(base_url=live_server.url, timeout=30) as http:
        sandbox = _sandbox(http)
        for url, why in (
            (receiver.url, "127.0.0.1"),
            ("http://10.0.0.5/hook", "10.0.0.5"),
            ("http://[::1]:8080/", "::1"),
            ("http://169.254.169.254/latest/meta-data", "169.254.169.254"),
            ("ftp://example.com/x", "http or https"),
            ("not a url", "http or https"),
        ):
            refused = http.post(
                f"{sandbox['public_host']}/execute/async",
                json={"code": "print(1)", "callback_url": url},
            )
            assert refused.status_code == 400, (url, refused.text)
            assert why in refused.json()["error"], refused.json()
        missing = http.post(f"{sandbox['public_host']}/execute/async", json={"code": "1"})
        assert missing.status_code == 400 and "callback_url" in missing.json()["error"]
        assert receiver.calls.empty()
        http.delete(f"/v1/sandboxes/{sandbox['id']}")
