from __future__ import annotations

from pathlib import Path

import pytest

from agentplex.settings import ConfigFileError, load_settings


def test_defaults_describe_every_field() -> None:
    settings = load_settings()
    assert settings.server.host == "127.0.0.1"
    assert settings.server.port == 8080
    assert settings.database_url.startswith("sqlite+aiosqlite:///")
    for _name, section in settings:
        for field_name, field in type(section).model_fields.items():
            assert field.description, f"{field_name} has no description"


def test_precedence_flags_over_env_over_toml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "agentplex.toml"
    config.write_text('[server]\nport = 9000\nhost = "127.0.0.2"\n[log]\nlevel = "debug"\n')
    assert load_settings(config).server.port == 9000
    monkeypatch.setenv("AGENTPLEX_PORT", "9100")
    settings = load_settings(config)
    assert settings.server.port == 9100
    assert settings.server.host == "127.0.0.2"
    assert settings.log.level == "debug"
    assert load_settings(config, {"server": {"port": 7}}).server.port == 7


def test_config_file_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[rate_limit]\ndefault = "99/second"\n')
    monkeypatch.setenv("AGENTPLEX_CONFIG", str(config))
    assert load_settings().rate_limit.default == "99/second"


def test_documented_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTPLEX_DATA_DIR", "/srv/agentplex")
    monkeypatch.setenv("AGENTPLEX_DATABASE_URL", "postgresql+psycopg://u:pw@db/agentplex")
    monkeypatch.setenv("AGENTPLEX_BUS_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("HOTPLEX_API_KEY", "hotplex-key")
    settings = load_settings()
    assert settings.server.data_dir == Path("/srv/agentplex")
    assert settings.database_url == "postgresql+psycopg://u:pw@db/agentplex"
    assert settings.bus.url == "redis://127.0.0.1:6379/0"
    assert settings.auth.api_key is not None
    assert settings.auth.api_key.get_secret_value() == "hotplex-key"


def test_redacted_hides_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTPLEX_API_KEY", "super-secret-key")
    monkeypatch.setenv("AGENTPLEX_DATABASE_URL", "postgresql+psycopg://u:hunter2@db/x")
    monkeypatch.setenv("AGENTPLEX_BUS_URL", "redis://:redispass@cache:6379/0")
    redacted = load_settings().redacted()
    text = str(redacted)
    assert "super-secret-key" not in text
    assert "hunter2" not in text and "redispass" not in text
    assert redacted["auth"]["api_key"] == "***REDACTED***"
    assert redacted["database"]["url"] == "postgresql+psycopg://u:***REDACTED***@db/x"


def test_bad_config_file_is_reported(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("[server\nport=")
    with pytest.raises(ConfigFileError, match="cannot read config file"):
        load_settings(broken)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[serverr]\nport = 1\n")
    with pytest.raises(ConfigFileError, match="unknown table"):
        load_settings(unknown)


def test_invalid_values_are_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTPLEX_PORT", "not-a-port")
    with pytest.raises(ValueError, match="port"):
        load_settings()


def test_data_dir_is_created_private_and_a_loose_one_tightened(tmp_path: Path) -> None:
    fresh = load_settings(None, {"server": {"data_dir": tmp_path / "a" / "data"}})
    assert fresh.server.ensure_data_dir().stat().st_mode & 0o777 == 0o700
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    loose.chmod(0o755)
    settings = load_settings(None, {"server": {"data_dir": loose}})
    settings.server.ensure_data_dir()
    assert loose.stat().st_mode & 0o777 == 0o700
