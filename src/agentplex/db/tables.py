"""Table definitions. Queries live in ``db.records`` (sandboxes, templates, sessions) and, for the
foundation's keys, environments and streams, in their core modules."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# SQLite only auto-increments an INTEGER PRIMARY KEY (the rowid); PostgreSQL gets a BIGINT.
BigId = BigInteger().with_variant(Integer(), "sqlite")

environments = Table(
    "environments",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("org_id", String(36), nullable=False),
    Column("name", String(200), nullable=False, unique=True),
    Column("active", Boolean, nullable=False, default=True),
    Column("max_concurrent_runs", Integer, nullable=False, default=50),
    Column("requests_per_hour", Integer, nullable=False, default=1000),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("env_id", String(36), ForeignKey("environments.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(200), nullable=False),
    Column("prefix", String(16), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("last_used_at", DateTime(timezone=True), nullable=True),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
)

stream_items = Table(
    "stream_items",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("stream_id", String(200), nullable=False),
    Column("data", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_stream_items_stream_id_id", "stream_id", "id"),
)

sandboxes = Table(
    "sandboxes",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("env_id", String(36), ForeignKey("environments.id", ondelete="CASCADE"), nullable=False),
    Column("template_id", String(100), nullable=False),
    Column("template_name", String(100), nullable=False),
    Column("status", String(16), nullable=False),
    Column("status_reason", String(500), nullable=True),
    Column("isolation", String(16), nullable=False),
    Column("internet_access", Boolean, nullable=False),
    Column("timeout_seconds", Integer, nullable=True),
    Column("resources", JSON, nullable=False),
    Column("env_vars", JSON, nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_sandboxes_env_id_created_at", "env_id", "created_at"),
)

sandbox_tokens = Table(
    "sandbox_tokens",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column(
        "sandbox_id", String(64), ForeignKey("sandboxes.id", ondelete="CASCADE"), nullable=False
    ),
    Column("env_id", String(36), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_sandbox_tokens_sandbox_id", "sandbox_id"),
    Index("ix_sandbox_tokens_expires_at", "expires_at"),
)

templates = Table(
    "templates",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("env_id", String(36), ForeignKey("environments.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(100), nullable=False),
    Column("display_name", String(200), nullable=False),
    Column("base_template", String(100), nullable=False),
    Column("language", String(32), nullable=False),
    Column("status", String(16), nullable=False),
    Column("steps", JSON, nullable=False),
    Column("env", JSON, nullable=False),
    Column("resources", JSON, nullable=False),
    Column("logs", Text, nullable=False),
    Column("error_message", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=True),
    Column("completed_at", DateTime(timezone=True), nullable=True),
    UniqueConstraint("env_id", "name", name="uq_templates_env_id_name"),
)

# Agent sessions. Times are epoch milliseconds (the unit of the session model and of OpenCode's
# wire format), so they are stored as integers rather than converted back and forth.
sessions = Table(
    "sessions",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("env_id", String(36), ForeignKey("environments.id", ondelete="CASCADE"), nullable=False),
    Column("parent_id", String(64), nullable=True),
    Column("status", String(16), nullable=False),
    Column("channel", String(64), nullable=False),
    Column("user_id", String(200), nullable=True),
    Column("title", Text, nullable=False),
    Column("directory", Text, nullable=False),
    Column("slug", String(100), nullable=False),
    Column("project_id", String(100), nullable=False),
    Column("created", BigInteger, nullable=False),
    Column("updated", BigInteger, nullable=False),
    Column("last_activity", BigInteger, nullable=False),
    Column("terminated", BigInteger, nullable=True),
    Column("model_provider", String(100), nullable=True),
    Column("model_id", String(200), nullable=True),
    Column("sandbox_id", String(64), nullable=True),
    Column("tokens", JSON, nullable=False),
    Column("cost", Float, nullable=False),
    Column("turn_count", Integer, nullable=False),
    Column("metadata", JSON, nullable=False),
    Column("permission", JSON, nullable=False),
    Index("ix_sessions_env_id_status", "env_id", "status"),
    Index("ix_sessions_env_id_created", "env_id", "created"),
    Index("ix_sessions_parent_id", "parent_id"),
)

# One row per message; ``data`` holds the rest of the message, its parts (in order) included:
# parts are always read and written with their message, and one row keeps the upsert atomic.
session_messages = Table(
    "session_messages",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("session_id", String(64), ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False),
    Column("env_id", String(36), nullable=False),
    Column("role", String(16), nullable=False),
    Column("created", BigInteger, nullable=False),
    Column("completed", BigInteger, nullable=True),
    Column("data", JSON, nullable=False),
    Index("ix_session_messages_session_id_created_id", "session_id", "created", "id"),
)

# Hot projects: a name unique in its environment (a slug; never shaped like a UUID, so a
# reference is either).
projects = Table(
    "projects",
    metadata,
    Column("project_id", String(36), primary_key=True),
    Column("env_id", String(36), ForeignKey("environments.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(100), nullable=False),
    Column("active", Boolean, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("env_id", "name", name="uq_projects_env_id_name"),
)

# A project's context variables: values only as AES-256-GCM ciphertext (core.secrets), the
# associated data binding each to its project and key.
project_secrets = Table(
    "project_secrets",
    metadata,
    Column(
        "project_id",
        String(36),
        ForeignKey("projects.project_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("key", String(128), primary_key=True),
    Column("description", Text, nullable=True),
    Column("ciphertext", LargeBinary, nullable=False),
    Column("nonce", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# Build archives and other immutable blobs when server.blob_store is "database" (shared by every
# API replica on the same database); keys are content hashes (core.blobs).
blobs = Table(
    "blobs",
    metadata,
    Column("key", String(200), primary_key=True),
    Column("data", LargeBinary, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

# A project's uploaded builds (a zip in the blob store under ``blob_key``, its manifest parsed
# into ``manifest``). At most one deployed and one live build per project.
builds = Table(
    "builds",
    metadata,
    Column("build_id", String(36), primary_key=True),
    Column("env_id", String(36), ForeignKey("environments.id", ondelete="CASCADE"), nullable=False),
    Column(
        "project_id",
        String(36),
        ForeignKey("projects.project_id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("hash", String(64), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("build_type", String(32), nullable=False),
    Column("blob_key", String(200), nullable=False),
    Column("storage_backend", String(16), nullable=False),
    Column("deployed", Boolean, nullable=False),
    Column("live", Boolean, nullable=False),
    Column("active", Boolean, nullable=False),
    Column("manifest", JSON, nullable=False),
    Column("deployed_at", DateTime(timezone=True), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_builds_env_id_created_at", "env_id", "created_at"),
    Index("ix_builds_project_id_created_at", "project_id", "created_at"),
)

# The deployed build's entry points, replaced as a whole at each deploy. ``ns``/``var`` are
# Hot's names (``::hello::math`` / ``add``), ``function`` the Python one (``hello.math:add``).
event_handlers = Table(
    "event_handlers",
    metadata,
    Column("event_handler_id", String(36), primary_key=True),
    Column("env_id", String(36), ForeignKey("environments.id", ondelete="CASCADE"), nullable=False),
    Column(
        "project_id",
        String(36),
        ForeignKey("projects.project_id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column(
        "build_id", String(36), ForeignKey("builds.build_id", ondelete="CASCADE"), nullable=False
    ),
    Column("event_type", String(200), nullable=False),
    Column("ns", String(500), nullable=False),
    Column("var", String(200), nullable=False),
    Column("function", String(700), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_event_handlers_env_id_event_type", "env_id", "event_type"),
    Index("ix_event_handlers_project_id", "project_id"),
)

schedules = Table(
    "schedules",
    metadata,
    Column("schedule_id", String(36), primary_key=True),
    Column("env_id", String(36), ForeignKey("environments.id", ondelete="CASCADE"), nullable=False),
    Column(
        "project_id",
        String(36),
        ForeignKey("projects.project_id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column(
        "build_id", String(36), ForeignKey("builds.build_id", ondelete="CASCADE"), nullable=False
    ),
    Column("cron", String(200), nullable=False),
    Column("tz", String(64), nullable=False),
    Column("ns", String(500), nullable=False),
    Column("var", String(200), nullable=False),
    Column("function", String(700), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_schedules_project_id", "project_id"),
)

# Published events (immutable). The runs an event starts write to its stream (``stream_id``).
events = Table(
    "events",
    metadata,
    Column("event_id", String(36), primary_key=True),
    Column("env_id", String(36), ForeignKey("environments.id", ondelete="CASCADE"), nullable=False),
    Column("project_id", String(36), nullable=True),
    Column("stream_id", String(36), nullable=False),
    Column("event_type", String(200), nullable=False),
    Column("event_data", JSON, nullable=False),
    Column("origin_run_id", String(36), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_events_env_id_created_at", "env_id", "created_at"),
    Index("ix_events_stream_id", "stream_id"),
)

# The durable run queue and the runs' history (engine.queue). A run is claimable when it is
# ``queued`` and ``available_at`` (creation, or the retry time) has come; ``fence`` goes up at
# each claim, and every write of the holder is guarded by it.
runs = Table(
    "runs",
    metadata,
    Column("run_id", String(36), primary_key=True),
    Column("env_id", String(36), ForeignKey("environments.id", ondelete="CASCADE"), nullable=False),
    Column(
        "project_id",
        String(36),
        ForeignKey("projects.project_id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("build_id", String(36), nullable=True),
    Column("event_id", String(36), nullable=True),
    Column("stream_id", String(36), nullable=False),
    Column("run_type", String(16), nullable=False),
    Column("ns", String(500), nullable=False),
    Column("var", String(200), nullable=False),
    Column("function", String(700), nullable=False),
    Column("status", String(16), nullable=False),
    Column("input", JSON, nullable=True),
    Column("result", JSON, nullable=True),
    Column("error", JSON, nullable=True),
    Column("attempt", Integer, nullable=False),
    Column("retry_attempt", Integer, nullable=False),
    Column("max_attempts", Integer, nullable=False),
    Column("available_at", DateTime(timezone=True), nullable=False),
    Column("next_retry_at", DateTime(timezone=True), nullable=True),
    Column("lease_owner", String(200), nullable=True),
    Column("lease_expires_at", DateTime(timezone=True), nullable=True),
    Column("fence", Integer, nullable=False),
    Column("heartbeat_at", DateTime(timezone=True), nullable=True),
    Column("timeout_seconds", Float, nullable=True),
    Column("cancel_requested", Boolean, nullable=False),
    Column("origin_run_id", String(36), nullable=True),
    Column("dedupe_key", String(300), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=True),
    Column("stopped_at", DateTime(timezone=True), nullable=True),
    UniqueConstraint("env_id", "dedupe_key", name="uq_runs_env_id_dedupe_key"),
    Index("ix_runs_status_available_at", "status", "available_at"),
    Index("ix_runs_status_lease_expires_at", "status", "lease_expires_at"),
    Index("ix_runs_env_id_status", "env_id", "status"),
    Index("ix_runs_env_id_created_at", "env_id", "created_at"),
    Index("ix_runs_event_id", "event_id"),
    Index("ix_runs_project_id", "project_id"),
    Index("ix_runs_stream_id", "stream_id"),
)

# What a run's handler captured (``sdk.capture``): Hot's run vars. ``ns`` is the handler's
# module (``::a::b``), ``var`` the captured name.
run_vars = Table(
    "run_vars",
    metadata,
    Column("var_id", String(36), primary_key=True),
    Column("run_id", String(36), ForeignKey("runs.run_id", ondelete="CASCADE"), nullable=False),
    Column("env_id", String(36), nullable=False),
    Column("ns", String(500), nullable=False),
    Column("var", String(200), nullable=False),
    Column("value", JSON, nullable=True),
    Column("meta", JSON, nullable=True),
    Column("start_time", DateTime(timezone=True), nullable=False),
    Column("stop_time", DateTime(timezone=True), nullable=True),
    Index("ix_run_vars_run_id", "run_id"),
)
