"""Configuration: one settings class per subsystem.

Precedence, highest first: command-line flags, ``AGENTPLEX_*`` environment variables, the TOML
file (``--config`` or ``AGENTPLEX_CONFIG``; one table per subsystem, e.g. ``[database]``), and
the defaults below.
"""

from __future__ import annotations

import contextlib
import os
import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import Any, ClassVar, Literal

from limits import parse as parse_limit
from pydantic import AliasChoices, BaseModel, Field, SecretStr, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

_toml_tables: ContextVar[dict[str, Any] | None] = ContextVar("_toml_tables", default=None)


class _TomlTableSource(PydanticBaseSettingsSource):
    """Feeds one table of the TOML file to the subsystem class that owns it."""

    def __init__(self, settings_cls: type[BaseSettings], table: str) -> None:
        super().__init__(settings_cls)
        self._data: dict[str, Any] = dict((_toml_tables.get() or {}).get(table, {}))

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return self._data


class _Subsystem(BaseSettings):
    table: ClassVar[str] = ""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _TomlTableSource(settings_cls, cls.table))


class ServerSettings(_Subsystem):
    """The HTTP server and where the server keeps its files."""

    table: ClassVar[str] = "server"
    model_config = SettingsConfigDict(env_prefix="AGENTPLEX_", extra="ignore")

    host: str = Field("127.0.0.1", description="Address to bind. Non-loopback needs an API key.")
    port: int = Field(8080, ge=0, le=65535, description="TCP port to listen on.")
    data_dir: Path = Field(
        Path(".agentplex"),
        description="Directory for the SQLite database, the master key and blobs.",
    )
    max_body_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="Largest request body accepted; larger is 413."
    )
    graceful_shutdown_seconds: float = Field(
        10.0, ge=0, description="How long in-flight requests may finish after SIGTERM/SIGINT."
    )
    public_url: str | None = Field(
        None, description="Base URL clients reach this server at (defaults to http://host:port)."
    )
    header_timeout_seconds: float = Field(
        10.0,
        ge=0,
        description="A connection must send a request's complete headers within this many "
        "seconds of opening (or of the previous response), else it is closed (0: no limit).",
    )
    ws_per_message_deflate: bool = Field(
        False,
        description="Offer WebSocket compression (permessage-deflate). Each compressed "
        "connection holds its own zlib state (hundreds of KiB); session events are small.",
    )
    max_connections: int = Field(
        4096,
        ge=1,
        description="Open connections (HTTP and WebSocket) served at once; more are answered "
        "503 and closed. Lowered if the process's open-file limit cannot hold them.",
    )
    master_key: SecretStr | None = Field(
        None,
        description="Master key (base64 of 32 random bytes) from which each environment's key "
        "for project context variables (secrets) is derived. Empty means <data_dir>/master.key, "
        "created on first start (mode 0600). Replicas sharing a database need the same key; a "
        "lost key makes the stored secrets unreadable.",
    )
    blob_store: Literal["auto", "local", "database"] = Field(
        "auto",
        description="Where build archives are kept: `local` (files under <data_dir>/blobs), "
        "`database` (a table every API replica sharing the database reads), or `auto` "
        "(database on PostgreSQL, local on SQLite).",
    )
    build_max_bytes: int = Field(
        50 * 1024 * 1024, ge=1024, description="Largest build archive accepted (compressed)."
    )
    build_max_files: int = Field(10_000, ge=1, description="Most entries a build archive may hold.")
    build_max_unpacked_bytes: int = Field(
        256 * 1024 * 1024,
        ge=1024,
        description="Largest total size of a build archive's files once extracted.",
    )
    build_max_ratio: float = Field(
        200.0,
        ge=1,
        description="Largest extracted-to-compressed size ratio of a build archive holding "
        "more than 1 MiB (a zip bomb's is in the thousands).",
    )

    def ensure_data_dir(self) -> Path:
        """Create the data directory, private to the server's user (0700, like a database
        server's): it holds the database and keys. A looser existing one is tightened."""
        path = self.data_dir
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if path.stat().st_mode & 0o077 and path.stat().st_uid == os.getuid():
            path.chmod(0o700)
        # inside a checkout, git and the linters must not take it (templates' layers hold
        # whole Python packages) for the project's own files, whatever it is called
        ignore = path / ".gitignore"
        if not ignore.exists():
            with contextlib.suppress(OSError):
                ignore.write_text("# agentplex data directory: nothing here is source\n*\n")
        return path


class DatabaseSettings(_Subsystem):
    """Where state lives: SQLite in the data directory, or PostgreSQL for scale-out."""

    table: ClassVar[str] = "database"
    model_config = SettingsConfigDict(env_prefix="AGENTPLEX_DATABASE_", extra="ignore")

    url: SecretStr | None = Field(
        None,
        description="SQLAlchemy URL, e.g. postgresql+psycopg://user@host/db. "
        "Empty means SQLite at <data_dir>/agentplex.db.",
    )
    pool_size: int = Field(10, ge=1, description="Connections kept open (PostgreSQL).")
    busy_timeout_ms: int = Field(5000, ge=0, description="SQLite busy timeout.")
    echo: bool = Field(False, description="Log every SQL statement.")


class AuthSettings(_Subsystem):
    """API keys and JWT bearer tokens."""

    table: ClassVar[str] = "auth"
    model_config = SettingsConfigDict(
        env_prefix="AGENTPLEX_AUTH_", extra="ignore", populate_by_name=True
    )

    api_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("AGENTPLEX_API_KEY", "HOTPLEX_API_KEY"),
        description="A key accepted in addition to stored keys (AGENTPLEX_API_KEY or "
        "HOTPLEX_API_KEY). It belongs to the default environment.",
    )
    jwt_secret: SecretStr | None = Field(
        None, description="Shared secret for HMAC-signed JWT bearer tokens (PAR)."
    )
    jwt_public_key: SecretStr | None = Field(
        None, description="PEM public key (or path to one) for RSA/EC-signed JWT bearer tokens."
    )
    jwt_algorithms: list[str] = Field(
        default_factory=lambda: ["HS256"],
        description="Algorithms a JWT may be signed with; nothing else is accepted.",
    )
    jwt_audience: str | None = Field(None, description="Required `aud` claim, if set.")
    jwt_issuer: str | None = Field(None, description="Required `iss` claim, if set.")
    public_docs: bool = Field(
        True, description="Serve /docs and /openapi.json without a key (they hold no data)."
    )
    cache_seconds: float = Field(
        2.0, ge=0, description="How long a verified key is trusted before it is looked up again."
    )


# Every rate-limit group (api/common/ratelimit.py picks one per request); each is a field below.
RATE_LIMIT_GROUPS = (
    "sessions_write",
    "sessions_read",
    "config_write",
    "default",
    "hopx_control",
    "hopx_data",
    "hot",
    "opencode",
    "par",
)


class RateLimitSettings(_Subsystem):
    """Rate limits per caller and endpoint group (`limits` syntax, e.g. "10/second").

    PRX's groups and numbers, and PAR's, are their references'. The others sit above what one
    official client can do when a script calls it back to back (a sequential loop of cheap
    Hopx calls measured ~350-400 requests/s on a 2-core machine), so that only a runaway or a
    crowd of callers meets them: the JS SDK does not retry a 429, a script would just fail.
    """

    table: ClassVar[str] = "rate_limit"
    model_config = SettingsConfigDict(env_prefix="AGENTPLEX_RATE_LIMIT_", extra="ignore")

    enabled: bool = Field(True, description="Apply rate limits at all.")
    storage_url: str = Field(
        "memory://", description="limits storage: memory:// or redis://host:port/db."
    )
    sessions_write: str = Field(
        "10/second", description="PRX: creating, changing or deleting /api/v1/sessions."
    )
    sessions_read: str = Field("50/second", description="PRX: reading /api/v1/sessions.")
    config_write: str = Field("5/second", description="PRX: changing /api/v1/config.")
    default: str = Field(
        "30/second",
        description="PRX's other endpoints (/api/v1/logs, ...) and those of no protocol "
        "surface (/metrics).",
    )
    hopx_control: str = Field(
        "500/second", description="Hopx control plane: /v1/sandboxes, /v1/templates."
    )
    hopx_data: str = Field(
        "1000/second",
        description="Hopx data plane (/sandboxes/{id}/...), per caller and sandbox.",
    )
    hot: str = Field("500/second", description="Hot: the other /v1/... endpoints.")
    opencode: str = Field(
        "500/second", description="OpenCode/HotPlex: /session, /event, /global, /config, /ws."
    )
    par: str = Field(
        "1000/minute", description="PAR: /agents, /agent, /platform, /logs (its reference's)."
    )

    @field_validator(*RATE_LIMIT_GROUPS)
    @classmethod
    def _is_a_rate(cls, value: str) -> str:
        try:
            parse_limit(value)
        except ValueError:
            raise ValueError(
                f"{value!r} is not a rate limit; write it like '10/second' or '100/minute'"
            ) from None
        return value


class BusSettings(_Subsystem):
    """The pub/sub bus that fans stream items out to subscribers."""

    table: ClassVar[str] = "bus"
    model_config = SettingsConfigDict(env_prefix="AGENTPLEX_BUS_", extra="ignore")

    url: str = Field("memory://", description="memory:// (one process) or redis://host:port/db.")


class StreamSettings(_Subsystem):
    """Streams and their server-sent-event delivery."""

    table: ClassVar[str] = "streams"
    model_config = SettingsConfigDict(env_prefix="AGENTPLEX_STREAMS_", extra="ignore")

    ring_size: int = Field(1000, ge=1, description="Items kept per ephemeral (in-memory) stream.")
    keepalive_seconds: float = Field(15.0, gt=0, description="Interval of SSE keep-alive comments.")
    session_ring_size: int = Field(
        10000,
        ge=100,
        description="Session events kept per environment for clients that reconnect "
        "(Last-Event-ID replays from these).",
    )
    heartbeat_seconds: float = Field(
        10.0, gt=0, description="Interval of the session streams' server.heartbeat events."
    )


class LogSettings(_Subsystem):
    """Structured logging and the queryable log store."""

    table: ClassVar[str] = "log"
    model_config = SettingsConfigDict(env_prefix="AGENTPLEX_LOG_", extra="ignore")

    level: Literal["trace", "debug", "info", "warn", "warning", "error"] = Field(
        "info", description="Lowest level logged and stored."
    )
    format: Literal["text", "json"] = Field("text", description="Console log format.")
    store_size: int = Field(10000, ge=10, description="Log records kept for /api/v1/logs.")
    access_log: bool = Field(False, description="Log every HTTP request.")


class SandboxSettings(_Subsystem):
    """Sandboxes: isolation, warm pool and lifetimes."""

    table: ClassVar[str] = "sandbox"
    model_config = SettingsConfigDict(env_prefix="AGENTPLEX_SANDBOX_", extra="ignore")

    enabled: bool = Field(True, description="Offer sandboxes at all.")
    allow_unisolated: bool = Field(
        False,
        description="Run sandboxes without bubblewrap isolation when it is unavailable. "
        "Unsafe: sandboxed code then runs as the server's user.",
    )
    pool_size: int = Field(
        2, ge=0, description="Sandboxes kept started ahead of demand (0 disables the pool)."
    )
    default_timeout_seconds: int = Field(
        3600, ge=0, description="Lifetime of a sandbox created without timeout_seconds (0: none)."
    )
    max_timeout_seconds: int = Field(
        7 * 24 * 3600, ge=1, description="Longest timeout_seconds a client may ask for."
    )
    token_ttl_seconds: int = Field(
        24 * 3600, ge=60, description="How long a sandbox's data-plane auth_token is valid."
    )
    sweep_seconds: float = Field(
        1.0, gt=0, description="How often expired sandboxes are looked for."
    )
    callback_allow_private: bool = Field(
        False,
        description="Let /execute/async POST its result to loopback and private addresses "
        "(off: only public addresses, so clients cannot make the server call into its network).",
    )
    max_per_environment: int = Field(
        100,
        ge=1,
        description="Live sandboxes (creating, running or paused) one environment may have; "
        "creating or starting one more is refused (403 resource_limit).",
    )
    max_builds_per_environment: int = Field(
        2,
        ge=1,
        description="Template builds one environment may run at once; "
        "one more is refused (403 resource_limit).",
    )
    warm_on_start: bool = Field(
        True,
        description="Start the sandbox layer (fork server, warm pool) when the server starts; "
        "otherwise on the first sandbox request.",
    )


class RunSettings(_Subsystem):
    """The run engine: workers, leases, retries, timeouts and the warm sandboxes of builds."""

    table: ClassVar[str] = "runs"
    model_config = SettingsConfigDict(env_prefix="AGENTPLEX_RUNS_", extra="ignore")

    workers: int = Field(
        16,
        ge=0,
        description="Runs `agentplex serve` executes at once in-process (0: none; runs then "
        "need `agentplex worker` processes).",
    )
    scheduler: bool = Field(True, description="Run the cron scheduler in `agentplex serve`.")
    lease_seconds: float = Field(
        30.0,
        gt=0,
        description="How long a claimed run stays a worker's without a heartbeat; a run whose "
        "worker died is taken back this long after its last heartbeat.",
    )
    heartbeat_seconds: float = Field(
        10.0, gt=0, description="How often a worker renews the leases of its running runs."
    )
    sweep_seconds: float = Field(
        5.0, gt=0, description="How often runs whose lease expired are looked for."
    )
    default_timeout_seconds: float = Field(
        300.0, gt=0, description="Longest a handler may run when its run sets no timeout."
    )
    max_attempts: int = Field(
        3, ge=1, description="Attempts of a run before it fails for good (first one included)."
    )
    backoff_base_seconds: float = Field(
        1.0, ge=0, description="Wait before the first retry; each next retry waits twice as long."
    )
    backoff_max_seconds: float = Field(300.0, ge=0, description="Longest wait before a retry.")
    warm_per_build: int = Field(
        4,
        ge=0,
        description="Warm sandboxes kept per deployed build, its code imported (more while its"
        " runs overlap, up to max_warm_sandboxes; the extra ones stop after 30 s idle).",
    )
    max_warm_sandboxes: int = Field(
        16,
        ge=1,
        description="Warm build sandboxes one process keeps at most (least recently used go).",
    )
    warm_idle_seconds: float = Field(
        600.0, gt=0, description="A warm build sandbox unused this long is stopped."
    )
    internet_access: bool = Field(
        False, description="Let handlers reach the network (off: no network in their sandbox)."
    )
    claim_batch: int = Field(16, ge=1, description="Most runs a worker claims in one transaction.")
    grace_seconds: float = Field(
        10.0,
        ge=0,
        description="On shutdown, how long running runs may finish before they are queued "
        "again for another worker.",
    )


Permission = Literal["allow", "ask", "deny"]


class AgentSettings(_Subsystem):
    """The built-in agent: its model, its limits and its tools' permissions (PRX's names)."""

    table: ClassVar[str] = "agent"
    model_config = SettingsConfigDict(
        env_prefix="AGENTPLEX_AGENT_", extra="ignore", populate_by_name=True
    )

    model: str | None = Field(
        None,
        validation_alias=AliasChoices("AGENTPLEX_MODEL", "AGENTPLEX_AGENT_MODEL", "model"),
        description="Default model as provider:model (openai:gpt-4o-mini, "
        "anthropic:claude-sonnet-4-5) or `local` (the embedded SmolLM2, extra agentplex[local]). "
        "Unset: the first configured provider's first model.",
    )
    openai_api_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("OPENAI_API_KEY", "openai_api_key"),
        description="Key of the OpenAI-compatible Chat Completions provider (OPENAI_API_KEY).",
    )
    openai_base_url: str | None = Field(
        None,
        validation_alias=AliasChoices("OPENAI_BASE_URL", "openai_base_url"),
        description="Base URL of an OpenAI-compatible server (OPENAI_BASE_URL): vLLM, Ollama, "
        "llama.cpp server, ... Set alone (no key) it still enables the provider.",
    )
    openai_models: list[str] = Field(
        default_factory=lambda: ["gpt-4o-mini", "gpt-4o"],
        description="Models listed for the openai provider.",
    )
    anthropic_api_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("ANTHROPIC_API_KEY", "anthropic_api_key"),
        description="Key of the Anthropic Messages provider (ANTHROPIC_API_KEY).",
    )
    anthropic_models: list[str] = Field(
        default_factory=lambda: ["claude-sonnet-4-5", "claude-haiku-4-5"],
        description="Models listed for the anthropic provider.",
    )
    scripted_model: bool = Field(
        False,
        description="Offer the deterministic scripted model `scripted:scripted-model` (tests "
        "and benchmarks).",
    )
    local_model: bool = Field(
        True,
        description="Offer the embedded SmolLM2-135M-Instruct model when agentplex[local] is "
        "installed.",
    )
    max_turns: int = Field(
        20, ge=1, description="Model steps one prompt may take before its turn ends with a note."
    )
    max_tool_calls_per_turn: int = Field(
        50, ge=0, description="Tool calls one prompt may make before its turn ends with a note."
    )
    session_timeout_secs: int = Field(
        86400,
        ge=1,
        description="A session quiet for this long is terminated and its sandbox reclaimed.",
    )
    idle_after_secs: int = Field(
        300, ge=1, description="A session quiet for this long goes from active to idle (PRX)."
    )
    max_retries: int = Field(
        3, ge=0, description="Retries of a model call that failed in a way worth retrying."
    )
    retry_backoff_secs: float = Field(
        1.0, ge=0, description="First retry delay; each further retry waits twice as long."
    )
    model_timeout_secs: float = Field(
        300.0, gt=0, description="A model call that sends nothing for this long fails."
    )
    tool_timeout_secs: float = Field(
        120.0, gt=0, description="Default time limit of one tool call."
    )
    template: str = Field("python", description="Template of a session's sandbox.")
    permissions: dict[str, Permission] = Field(
        default_factory=dict,
        description="Per tool: allow, ask or deny (OpenCode's `permission`); `*` sets the "
        "default, which is allow.",
    )
    system_prompt: str = Field(
        "You are a helpful assistant running in agentplex. You can run shell commands and "
        "Python, and read and write files, in this session's own sandbox.",
        description="The agent's system prompt; a prompt's `system` is added to it.",
    )


class Settings(BaseModel):
    """The whole configuration."""

    server: ServerSettings
    database: DatabaseSettings
    auth: AuthSettings
    rate_limit: RateLimitSettings
    bus: BusSettings
    streams: StreamSettings
    log: LogSettings
    sandbox: SandboxSettings
    agent: AgentSettings
    runs: RunSettings

    @property
    def database_url(self) -> str:
        """The effective SQLAlchemy URL."""
        if self.database.url is not None and self.database.url.get_secret_value():
            return self.database.url.get_secret_value()
        return f"sqlite+aiosqlite:///{(self.server.data_dir / 'agentplex.db').resolve()}"

    def redacted(self) -> dict[str, Any]:
        """The configuration as plain data with every secret replaced."""
        data = self.model_dump(mode="json")
        for section, model in self:
            for name, value in model:
                if isinstance(value, SecretStr):
                    data[section][name] = "***REDACTED***" if value.get_secret_value() else None
        if self.database.url is not None:
            data["database"]["url"] = _without_password(self.database.url.get_secret_value())
        for section, name in (("bus", "url"), ("rate_limit", "storage_url")):
            data[section][name] = _without_password(data[section][name])
        return data


def _without_password(url: str) -> str:
    """A connection URL with its password replaced, so it can be shown."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in credentials:
        return url
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***REDACTED***@{host}"


_SUBSYSTEMS: dict[str, type[_Subsystem]] = {
    "server": ServerSettings,
    "database": DatabaseSettings,
    "auth": AuthSettings,
    "rate_limit": RateLimitSettings,
    "bus": BusSettings,
    "streams": StreamSettings,
    "log": LogSettings,
    "sandbox": SandboxSettings,
    "agent": AgentSettings,
    "runs": RunSettings,
}


class ConfigFileError(Exception):
    """The configuration file could not be read."""


def load_settings(
    config_file: Path | None = None, overrides: dict[str, dict[str, Any]] | None = None
) -> Settings:
    """Build the settings from flags (``overrides``), environment, TOML file and defaults."""
    path = config_file or (Path(p) if (p := os.environ.get("AGENTPLEX_CONFIG")) else None)
    tables: dict[str, Any] = {}
    if path is not None:
        try:
            tables = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigFileError(f"cannot read config file {path}: {exc}") from exc
        unknown = set(tables) - set(_SUBSYSTEMS)
        if unknown:
            raise ConfigFileError(
                f"unknown table(s) {sorted(unknown)} in {path}; known: {sorted(_SUBSYSTEMS)}"
            )
    token = _toml_tables.set(tables)
    try:
        parts = {
            name: cls(**{k: v for k, v in (overrides or {}).get(name, {}).items() if v is not None})
            for name, cls in _SUBSYSTEMS.items()
        }
    finally:
        _toml_tables.reset(token)
    return Settings(**parts)
