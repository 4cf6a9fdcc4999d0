"""What a newcomer and an operator meet first, against `agentplex serve` and the CLI:

- environments: `agentplex env create|list`, keys scoped to one, Hot's `GET /v1/env`;
- the data directory: every command finds it as `serve` does (flag, AGENTPLEX_DATA_DIR, the
  config file) and says where a key went; `serve` says where its keys come from;
- an unauthenticated `/status` shows only what a probe needs;
- `/docs` works with no network: Swagger UI's files come from the server itself.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.conftest import Cli, ServeFactory

pytestmark = pytest.mark.e2e


def test_env_create_list_and_hot_env_reflects_the_keys_environment(
    cli: Cli, data_dir: Path, serve: ServeFactory, new_key: Callable[..., str]
) -> None:
    created = cli("env", "create", "staging", "--data-dir", str(data_dir))
    staging_id = created.stdout.strip()
    assert "auth token --env staging" in created.stderr
    duplicate = cli("env", "create", "staging", "--data-dir", str(data_dir), check=False)
    assert duplicate.returncode != 0 and "exists already" in duplicate.stderr
    bad = cli("env", "create", "no spaces", "--data-dir", str(data_dir), check=False)
    assert bad.returncode != 0 and "Invalid environment name" in bad.stderr

    staging_key = cli(
        "auth", "token", "--env", "staging", "--data-dir", str(data_dir)
    ).stdout.strip()
    default_key = new_key()
    listing = cli("env", "list", "--data-dir", str(data_dir)).stdout
    rows = {line.split()[0]: line.split() for line in listing.splitlines()[1:]}
    assert rows["staging"][1] == staging_id and rows["staging"][2] == "1"
    assert rows["default"][2] == "1"
    missing = cli("auth", "token", "--env", "prod", "--data-dir", str(data_dir), check=False)
    assert missing.returncode != 0 and "env create prod" in missing.stderr
    quota_set = cli(
        "env", "quota", "staging", "--max-concurrent-runs", "7", "--data-dir", str(data_dir)
    )
    assert "max_concurrent_runs 7" in quota_set.stdout
    too_many = cli(
        "env",
        "quota",
        "staging",
        "--max-concurrent-runs",
        "-1",
        "--data-dir",
        str(data_dir),
        check=False,
    )
    assert too_many.returncode != 0 and "0 to 100000" in too_many.stderr

    server = serve()
    with server.client(staging_key) as http:
        env = http.get("/v1/env")
        assert env.status_code == 200, env.text
        body = env.json()
        assert body["data"]["env_id"] == staging_id and body["data"]["name"] == "staging"
        assert body["data"]["active"] is True and body["data"]["org_id"]
        assert set(body["meta"]) == {"request_id", "timestamp"}
        quota = http.get("/v1/env/quota").json()["data"]
        assert quota["compute_used_percent"] == 0
        assert quota["max_concurrent_runs"] == 7 and quota["requests_per_hour"] > 0
    with server.client(default_key) as http:
        assert http.get("/v1/env").json()["data"]["name"] == "default"
    with server.client() as http:
        refused = http.get("/v1/env")
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"


@pytest.mark.parametrize("how", ["env", "config"])
def test_every_command_finds_the_data_directory_as_serve_does(
    cli: Cli, serve: ServeFactory, tmp_path: Path, how: str
) -> None:
    # a server whose data directory comes from AGENTPLEX_DATA_DIR or the config file, and
    # `auth token` run the same way, without --data-dir
    elsewhere = tmp_path / "elsewhere"
    config = tmp_path / "agentplex.toml"
    config.write_text(f'[server]\ndata_dir = "{elsewhere}"\n')
    env = (
        {"AGENTPLEX_DATA_DIR": str(elsewhere)}
        if how == "env"
        else {"AGENTPLEX_CONFIG": str(config)}
    )
    env["AGENTPLEX_DATABASE_URL"] = ""  # the database is the data directory's SQLite file
    made = cli("auth", "token", "--name", "found", env=env)
    key = made.stdout.strip()
    # it says where the key went
    assert str(elsewhere.resolve()) in made.stderr
    assert "did not exist and was created" in made.stderr
    # and the command it suggests runs as printed (the program may not be on PATH)
    suggested = re.search(r"`(\S+) serve", made.stderr)
    assert suggested is not None, made.stderr
    assert shutil.which(suggested.group(1), path=os.environ.get("PATH")) or (
        Path(suggested.group(1)).is_file()
    ), suggested.group(1)
    listed = cli("auth", "keys", env=env)
    assert "found" in listed.stdout and str(elsewhere.resolve()) in listed.stderr

    # `serve` says where its keys come from: the fixture passes --data-dir <tmp>/data, and a
    # flag wins over the environment and the config file, for serve as for the CLI
    flagged = serve(env=env)
    assert f"0 active API key(s) in the data directory {flagged.data_dir.resolve()}" in (
        flagged.stderr
    )
    flagged.kill()
    server = serve(env=env, args=("--data-dir", str(elsewhere)))
    assert f"1 active API key(s) in the data directory {elsewhere.resolve()}" in server.stderr
    with server.client(key) as http:
        assert http.get("/v1/sandboxes").status_code == 200


def test_auth_keys_all_shows_revoked_keys(
    cli: Cli, data_dir: Path, new_key: Callable[..., str]
) -> None:
    new_key("kept")
    gone = new_key("gone")
    cli("auth", "revoke", gone[:12], "--data-dir", str(data_dir))
    active = cli("auth", "keys", "--data-dir", str(data_dir)).stdout
    assert "kept" in active and "gone" not in active
    everything = cli("auth", "keys", "--all", "--data-dir", str(data_dir)).stdout
    assert re.search(r"gone .* revoked", everything) and re.search(r"kept .* active", everything)


def test_public_status_keeps_the_servers_internals_for_key_holders(
    serve: ServeFactory, new_key: Callable[..., str]
) -> None:
    key = new_key()
    server = serve()
    with server.client() as http:
        public = http.get("/status")
        assert public.status_code == 200
        body = public.json()
        # what Hot's and PAR's probes read
        assert body["status"] == "ok" and body["service"] and body["version"]
        assert body["start_time"] and body["success"] is True
        assert {"mode", "version", "uptime"} <= set(body["data"]["runtime"])
        # nothing about sandboxes, pools, the database or the bind address
        assert "sandbox" not in body and "database" not in body
        assert "host" not in body["data"]["server"]
        assert "sandbox" not in public.text and "pool" not in public.text
    with server.client(key) as http:
        full = http.get("/status").json()
        assert "sandbox" in full and full["database"] in ("sqlite", "postgresql")
        assert full["data"]["server"]["host"] == "127.0.0.1"
    with server.client("apx_not_a_key") as http:
        assert "sandbox" not in http.get("/status").json()


def test_docs_load_with_no_network(serve: ServeFactory) -> None:
    server = serve()
    with server.client() as http:
        page = http.get("/docs")
        assert page.status_code == 200
        # every script and stylesheet the page loads is served by this server
        assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert assets and all(a.startswith("/") for a in assets), assets
        assert "cdn" not in page.text
        for asset in assets:
            got = http.get(asset)
            assert got.status_code == 200 and len(got.content) > 0, asset
        bundle = http.get("/docs/swagger-ui-bundle.js")
        assert "SwaggerUIBundle" in bundle.text
        assert http.get("/docs/swagger-ui.css").headers["content-type"].startswith("text/css")
