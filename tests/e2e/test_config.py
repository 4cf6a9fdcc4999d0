"""`agentplex config show` as an operator reads it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agentplex.settings import Settings
from tests.e2e.conftest import Cli

pytestmark = pytest.mark.e2e

# Every subsystem the settings declare, so a new one is checked without touching this file.
SECTIONS = list(Settings.model_fields)
API_KEY = "e2e-api-key-must-stay-hidden"
DB_PASSWORD = "e2e-db-password-must-stay-hidden"


@pytest.fixture
def secret_env() -> dict[str, str]:
    return {
        "AGENTPLEX_API_KEY": API_KEY,
        "AGENTPLEX_DATABASE_URL": f"postgresql+psycopg://agentplex:{DB_PASSWORD}@db.example/ap",
    }


def test_config_show_prints_every_section_without_secrets(
    cli: Cli, secret_env: dict[str, str]
) -> None:
    out = cli("config", "show", env=secret_env).stdout

    assert {"server", "database", "auth", "rate_limit", "bus", "streams", "log"} <= set(SECTIONS)
    for section in SECTIONS:
        assert f"[{section}]" in out
    assert API_KEY not in out
    assert DB_PASSWORD not in out
    assert "db.example" in out  # the URL stays recognisable, only its password is hidden
    # Every field comes with its description.
    assert "# TCP port to listen on." in out


def test_config_show_json_is_valid_and_redacted(cli: Cli, secret_env: dict[str, str]) -> None:
    out = cli("config", "show", "--json", env=secret_env).stdout

    data = json.loads(out)
    assert list(data) == SECTIONS
    assert API_KEY not in out
    assert DB_PASSWORD not in out
    assert data["auth"]["api_key"] not in (None, "")
    assert data["server"]["port"] == 8080


def test_toml_file_is_read_and_environment_beats_it(cli: Cli, tmp_path: Path) -> None:
    config = tmp_path / "agentplex.toml"
    config.write_text('[server]\nport = 9123\n\n[log]\nlevel = "debug"\n')

    from_file = json.loads(cli("config", "show", "--json", "--config", str(config)).stdout)
    overridden = json.loads(
        cli(
            "config", "show", "--json", "--config", str(config), env={"AGENTPLEX_PORT": "9124"}
        ).stdout
    )

    assert from_file["server"]["port"] == 9123
    assert from_file["log"]["level"] == "debug"
    assert overridden["server"]["port"] == 9124
    assert overridden["log"]["level"] == "debug"


def test_a_bad_config_file_is_reported_not_a_traceback(cli: Cli, tmp_path: Path) -> None:
    config = tmp_path / "agentplex.toml"
    config.write_text("[sever]\nport = 1\n")

    result = cli("config", "show", "--config", str(config), check=False)

    assert result.returncode != 0
    assert "sever" in result.stderr
    assert "Traceback" not in result.stderr
