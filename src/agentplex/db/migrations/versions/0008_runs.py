"""Events and runs: the durable run queue.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_RUN_INDEXES = {
    "ix_runs_status_available_at": ["status", "available_at"],
    "ix_runs_status_lease_expires_at": ["status", "lease_expires_at"],
    "ix_runs_env_id_status": ["env_id", "status"],
    "ix_runs_env_id_created_at": ["env_id", "created_at"],
    "ix_runs_event_id": ["event_id"],
    "ix_runs_project_id": ["project_id"],
}


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("event_id", sa.String(36), nullable=False),
        sa.Column("env_id", sa.String(36), nullable=False),
        sa.Column("project_id", sa.String(36), nullable=True),
        sa.Column("stream_id", sa.String(36), nullable=False),
        sa.Column("event_type", sa.String(200), nullable=False),
        sa.Column("event_data", sa.JSON, nullable=False),
        sa.Column("origin_run_id", sa.String(36), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("event_id", name="pk_events"),
        sa.ForeignKeyConstraint(
            ["env_id"],
            ["environments.id"],
            name="fk_events_env_id_environments",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_events_env_id_created_at", "events", ["env_id", "created_at"])
    op.create_table(
        "runs",
        sa.Column("run_id", sa.String(36), nullable=False),
        sa.Column("env_id", sa.String(36), nullable=False),
        sa.Column("project_id", sa.String(36), nullable=False),
        sa.Column("build_id", sa.String(36), nullable=True),
        sa.Column("event_id", sa.String(36), nullable=True),
        sa.Column("stream_id", sa.String(36), nullable=False),
        sa.Column("run_type", sa.String(16), nullable=False),
        sa.Column("ns", sa.String(500), nullable=False),
        sa.Column("var", sa.String(200), nullable=False),
        sa.Column("function", sa.String(700), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("input", sa.JSON, nullable=True),
        sa.Column("result", sa.JSON, nullable=True),
        sa.Column("error", sa.JSON, nullable=True),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("retry_attempt", sa.Integer, nullable=False),
        sa.Column("max_attempts", sa.Integer, nullable=False),
        sa.Column("available_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("next_retry_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_owner", sa.String(200), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("fence", sa.Integer, nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("timeout_seconds", sa.Float, nullable=True),
        sa.Column("cancel_requested", sa.Boolean, nullable=False),
        sa.Column("origin_run_id", sa.String(36), nullable=True),
        sa.Column("dedupe_key", sa.String(300), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("run_id", name="pk_runs"),
        sa.ForeignKeyConstraint(
            ["env_id"], ["environments.id"], name="fk_runs_env_id_environments", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.project_id"],
            name="fk_runs_project_id_projects",
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint("env_id", "dedupe_key", name="uq_runs_env_id_dedupe_key"),
    )
    for name, columns in _RUN_INDEXES.items():
        op.create_index(name, "runs", columns)


def downgrade() -> None:
    for name in _RUN_INDEXES:
        op.drop_index(name, table_name="runs")
    op.drop_table("runs")
    op.drop_index("ix_events_env_id_created_at", table_name="events")
    op.drop_table("events")
