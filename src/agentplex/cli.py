"""The ``agentplex`` command: serve, config, auth."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import shutil
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import click

from agentplex import __version__
from agentplex.errors import MasterKeyError
from agentplex.settings import ConfigFileError, Settings, load_settings

_CONFIG_OPTION = click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="TOML configuration file (also AGENTPLEX_CONFIG).",
)
_DATA_DIR_OPTION = click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Data directory (also AGENTPLEX_DATA_DIR; default ./.agentplex).",
)


def _settings(config_file: Path | None, server: dict[str, Any] | None = None) -> Settings:
    try:
        return load_settings(config_file, {"server": server or {}})
    except ConfigFileError as exc:
        raise click.ClickException(str(exc)) from exc
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise click.ClickException(f"invalid configuration:\n{exc}") from exc


@click.group()
@click.version_option(__version__, prog_name="agentplex")
def main() -> None:
    """agentplex: a self-hosted agent runtime."""


@main.command()
@click.option("--host", default=None, help="Address to bind (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port to listen on (default 8080).")
@_DATA_DIR_OPTION
@_CONFIG_OPTION
def serve(
    host: str | None, port: int | None, data_dir: Path | None, config_file: Path | None
) -> None:
    """Start the server: HTTP + WebSocket API, scheduler, workers."""
    import uvicorn

    from agentplex.app import create_app
    from agentplex.serving import connection_limit, guarded_protocol

    settings = _settings(config_file, {"host": host, "port": port, "data_dir": data_dir})
    keys = asyncio.run(_key_count(settings))
    static = settings.auth.api_key is not None or settings.auth.jwt_secret is not None
    static = static or settings.auth.jwt_public_key is not None
    click.echo(f"agentplex: {_key_sources(settings, keys)}", err=True)
    token_command = f"`{_prog()} auth token{_location_flags(settings)}`"
    if keys == 0 and not static:
        if not _is_loopback(settings.server.host):
            raise click.ClickException(
                f"refusing to serve on {settings.server.host} with no API key: anyone could "
                f"use this server.\nCreate a key first with {token_command} (or set "
                "AGENTPLEX_API_KEY), or bind a loopback address such as 127.0.0.1."
            )
        click.echo(
            "agentplex: no API key exists, so authentication is OFF and the server listens "
            f"only on loopback ({settings.server.host}). Create a key with "
            f"{token_command} to turn authentication on.",
            err=True,
        )
    try:
        app = create_app(settings)
    except MasterKeyError as exc:
        raise click.ClickException(exc.message) from None
    config = uvicorn.Config(
        app,
        host=settings.server.host,
        port=settings.server.port,
        http=guarded_protocol(
            settings.server.header_timeout_seconds,
            connection_limit(settings.server.max_connections),
        ),
        lifespan="on",
        log_config=None,
        access_log=settings.log.access_log,
        timeout_graceful_shutdown=int(settings.server.graceful_shutdown_seconds),
        proxy_headers=False,
        ws_max_size=settings.server.max_body_bytes,
        # compression state is ~300 KiB of zlib buffers per connection: off unless asked for
        ws_per_message_deflate=settings.server.ws_per_message_deflate,
    )
    # uvicorn re-raises the signal it caught once it has shut down; make that a clean exit.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit_cleanly)
    uvicorn.Server(config).run()


def _exit_cleanly(_signum: int, _frame: object) -> None:
    sys.exit(0)


@main.command()
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Runs executed at once (default: runs.workers, 8).",
)
@click.option(
    "--scheduler", is_flag=True, help="Also run the cron scheduler (it is safe in several)."
)
@_DATA_DIR_OPTION
@_CONFIG_OPTION
def worker(
    workers: int | None, scheduler: bool, data_dir: Path | None, config_file: Path | None
) -> None:
    """Execute queued runs of the configured database, without HTTP: a worker node.

    Several worker processes (and `agentplex serve`) share one PostgreSQL, on any machines;
    on SQLite they must share the machine and the data directory. Stops on SIGTERM/SIGINT,
    letting running runs finish for runs.grace_seconds."""
    from agentplex.services import WorkerNode

    settings = _settings(config_file, {"data_dir": data_dir})
    slots = workers if workers is not None else max(settings.runs.workers, 1)
    try:
        node = WorkerNode(settings, workers=slots, scheduler=scheduler)
    except MasterKeyError as exc:
        raise click.ClickException(exc.message) from None
    asyncio.run(_run_worker(node))


async def _run_worker(node: Any) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await node.start()
    try:
        await stop.wait()
    finally:
        await node.stop()


def _prog() -> str:
    """How to run this program from here: ``agentplex`` when that name on PATH is this
    program, else its path (e.g. ``.venv/bin/agentplex``, which scripts/install makes)."""
    argv0 = Path(sys.argv[0])
    if argv0.name != "agentplex" or not argv0.exists():
        return "agentplex"  # `python -m agentplex.cli`, or a test runner
    found = shutil.which("agentplex")
    if found is not None and Path(found).resolve() == argv0.resolve():
        return "agentplex"
    with contextlib.suppress(ValueError):
        return str(argv0.resolve().relative_to(Path.cwd().resolve()))
    return str(argv0.resolve())


def _where(settings: Settings) -> str:
    """The database keys (and everything else) live in, said so a person can compare."""
    if settings.database.url is not None and settings.database.url.get_secret_value():
        return f"the database {settings.redacted()['database']['url']}"
    return f"the data directory {settings.server.data_dir.resolve()}"


def _location_flags(settings: Settings) -> str:
    """The flags that point another command at this data directory ('' for the default)."""
    if settings.database.url is not None and settings.database.url.get_secret_value():
        return ""  # the database URL comes from the environment or the config file
    data_dir = settings.server.data_dir
    if data_dir.resolve() == (Path.cwd() / ".agentplex").resolve():
        return ""
    return f" --data-dir {data_dir.resolve()}"


def _key_sources(settings: Settings, keys: int) -> str:
    """Where this server's keys come from, for its start-up log."""
    sources = [f"{keys} active API key(s) in {_where(settings)}"]
    if settings.auth.api_key is not None:
        sources.append("AGENTPLEX_API_KEY/HOTPLEX_API_KEY")
    if settings.auth.jwt_secret is not None or settings.auth.jwt_public_key is not None:
        sources.append("JWTs (auth.jwt_secret / auth.jwt_public_key)")
    return "accepting " + ", ".join(sources)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


async def _key_count(settings: Settings) -> int:
    from agentplex.core import apikeys

    async with _connection(settings, write=False) as conn:
        return await apikeys.count_active(conn)


@contextlib.asynccontextmanager
async def _connection(settings: Settings, *, write: bool) -> AsyncIterator[Any]:
    """A connection to the server's database (migrated first), disposed of afterwards."""
    from agentplex.db import migrate

    db = _database(settings)
    try:
        await migrate.upgrade(db)
        async with db.write() if write else db.read() as conn:
            yield conn
    finally:
        await db.dispose()


def _database(settings: Settings) -> Any:
    from agentplex.db.engine import Database

    settings.server.ensure_data_dir()
    return Database(settings.database_url, busy_timeout_ms=settings.database.busy_timeout_ms)


@main.group()
def config() -> None:
    """Inspect the configuration."""


@config.command("show")
@_CONFIG_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of TOML-like text.")
def config_show(config_file: Path | None, as_json: bool) -> None:
    """Print the effective configuration, secrets redacted, with each field's description."""
    settings = _settings(config_file)
    data = settings.redacted()
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    for section, model in settings:
        click.echo(f"[{section}]")
        for name, field in type(model).model_fields.items():
            if field.description:
                click.echo(f"# {field.description}")
            click.echo(f"{name} = {json.dumps(data[section][name])}")
        click.echo()


@main.group()
def auth() -> None:
    """Manage API keys."""


@auth.command("token")
@click.option("--name", default="default", help="A label to recognise the key by.")
@click.option("--env", "env_name", default="default", help="Environment the key is scoped to.")
@_DATA_DIR_OPTION
@_CONFIG_OPTION
def auth_token(name: str, env_name: str, data_dir: Path | None, config_file: Path | None) -> None:
    """Create an API key and print it once (it cannot be shown again)."""
    settings = _settings(config_file, {"data_dir": data_dir})
    new_database = _is_new(settings)
    key, plaintext = asyncio.run(_create_key(settings, name, env_name))
    click.echo(plaintext)
    click.echo(
        f"created key {key.prefix}… ({key.id}) of environment {env_name!r} in "
        f"{_where(settings)}; store it now, it is not kept.\n"
        f"A server sees it when it runs with the same data: `{_prog()} serve"
        f"{_location_flags(settings)}` (or the same AGENTPLEX_DATA_DIR, "
        "AGENTPLEX_DATABASE_URL or --config).",
        err=True,
    )
    if new_database:
        click.echo(
            f"note: {_where(settings)} did not exist and was created just now; if your "
            "server runs with another --data-dir, pass the same one here.",
            err=True,
        )


def _is_new(settings: Settings) -> bool:
    """Whether the SQLite database a command is about to use does not exist yet."""
    if settings.database.url is not None and settings.database.url.get_secret_value():
        return False
    return not (settings.server.data_dir / "agentplex.db").exists()


async def _create_key(settings: Settings, name: str, env_name: str) -> Any:
    from agentplex.core import apikeys, environments

    async with _connection(settings, write=True) as conn:
        default = await environments.ensure_default(conn)
        env = default if env_name == default.name else None
        if env is None:
            env = await environments.get_by_name(conn, env_name)
        if env is None:
            raise click.ClickException(
                f"no environment named {env_name!r} in {_where(settings)}; create it with "
                f"`{_prog()} env create {env_name}{_location_flags(settings)}`"
            )
        return await apikeys.create(conn, env.id, name)


@auth.command("keys")
@click.option("--all", "include_revoked", is_flag=True, help="Include revoked keys.")
@_DATA_DIR_OPTION
@_CONFIG_OPTION
def auth_keys(include_revoked: bool, data_dir: Path | None, config_file: Path | None) -> None:
    """List API keys: prefix, name, created, last used."""
    from agentplex.core.clock import iso

    settings = _settings(config_file, {"data_dir": data_dir})
    keys = asyncio.run(_list_keys(settings, include_revoked))
    click.echo(f"keys in {_where(settings)}", err=True)
    click.echo(f"{'PREFIX':<14} {'NAME':<16} {'CREATED':<25} {'LAST USED':<25} STATUS")
    for k in keys:
        click.echo(
            f"{k.prefix:<14} {k.name[:16]:<16} {iso(k.created_at) or '':<25} "
            f"{iso(k.last_used_at) or 'never':<25} {'revoked' if k.revoked_at else 'active'}"
        )


async def _list_keys(settings: Settings, include_revoked: bool) -> Any:
    from agentplex.core import apikeys

    async with _connection(settings, write=False) as conn:
        return await apikeys.list_keys(conn, include_revoked=include_revoked)


@auth.command("revoke")
@click.argument("key")
@_DATA_DIR_OPTION
@_CONFIG_OPTION
def auth_revoke(key: str, data_dir: Path | None, config_file: Path | None) -> None:
    """Revoke the key with this id or prefix."""
    from agentplex.errors import NotFound

    settings = _settings(config_file, {"data_dir": data_dir})
    try:
        revoked = asyncio.run(_revoke(settings, key))
    except NotFound as exc:
        raise click.ClickException(exc.message) from exc
    click.echo(f"revoked key {revoked.prefix}… ({revoked.id})")


async def _revoke(settings: Settings, key: str) -> Any:
    from agentplex.core import apikeys

    async with _connection(settings, write=True) as conn:
        return await apikeys.revoke(conn, key)


@main.group("env")
def env_group() -> None:
    """Manage environments (the tenant boundary API keys are scoped to)."""


@env_group.command("create")
@click.argument("name")
@_DATA_DIR_OPTION
@_CONFIG_OPTION
def env_create(name: str, data_dir: Path | None, config_file: Path | None) -> None:
    """Create an environment; then `auth token --env NAME` makes keys for it."""
    from agentplex.errors import AgentplexError

    settings = _settings(config_file, {"data_dir": data_dir})
    try:
        env = asyncio.run(_create_env(settings, name))
    except AgentplexError as exc:
        raise click.ClickException(exc.message) from exc
    click.echo(env.id)
    click.echo(
        f"created environment {env.name!r} ({env.id}) in {_where(settings)}; make a key for "
        f"it with `{_prog()} auth token --env {env.name}{_location_flags(settings)}`",
        err=True,
    )


async def _create_env(settings: Settings, name: str) -> Any:
    from agentplex.core import environments

    async with _connection(settings, write=True) as conn:
        return await environments.create(conn, name)


@env_group.command("quota")
@click.argument("name", default="default")
@click.option("--max-concurrent-runs", type=int, default=None, help="Runs at once (0-100000).")
@click.option("--requests-per-hour", type=int, default=None, help="Shown by Hot's quota.")
@_DATA_DIR_OPTION
@_CONFIG_OPTION
def env_quota(
    name: str,
    max_concurrent_runs: int | None,
    requests_per_hour: int | None,
    data_dir: Path | None,
    config_file: Path | None,
) -> None:
    """Show or change an environment's quota (runs beyond max_concurrent_runs wait queued)."""
    from agentplex.errors import AgentplexError

    settings = _settings(config_file, {"data_dir": data_dir})
    try:
        env = asyncio.run(_set_quota(settings, name, max_concurrent_runs, requests_per_hour))
    except AgentplexError as exc:
        raise click.ClickException(exc.message) from exc
    click.echo(
        f"{env.name}: max_concurrent_runs {env.max_concurrent_runs}, "
        f"requests_per_hour {env.requests_per_hour}"
    )


async def _set_quota(settings: Settings, name: str, runs: int | None, requests: int | None) -> Any:
    from agentplex.core import environments

    async with _connection(settings, write=True) as conn:
        await environments.ensure_default(conn)
        return await environments.set_quota(
            conn, name, max_concurrent_runs=runs, requests_per_hour=requests
        )


@env_group.command("list")
@_DATA_DIR_OPTION
@_CONFIG_OPTION
def env_list(data_dir: Path | None, config_file: Path | None) -> None:
    """List environments: name, id, active keys, created."""
    from agentplex.core.clock import iso

    settings = _settings(config_file, {"data_dir": data_dir})
    envs, key_counts = asyncio.run(_list_envs(settings))
    click.echo(f"{'NAME':<24} {'ID':<36} {'KEYS':>4}  CREATED")
    for env in envs:
        click.echo(
            f"{env.name[:24]:<24} {env.id:<36} {key_counts.get(env.id, 0):>4}  "
            f"{iso(env.created_at) or ''}"
        )


async def _list_envs(settings: Settings) -> Any:
    from agentplex.core import apikeys, environments

    async with _connection(settings, write=True) as conn:
        await environments.ensure_default(conn)
        envs = await environments.list_all(conn)
        keys = await apikeys.list_keys(conn, include_revoked=False)
    counts: dict[str, int] = {}
    for key in keys:
        counts[key.env_id] = counts.get(key.env_id, 0) + 1
    return envs, counts


def _register_client_commands() -> None:
    from agentplex.cli_client import register

    register(main)


_register_client_commands()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
