"""Builds, the blob table, and the deployed build's event handlers and schedules.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def _owner_columns() -> list[sa.Column[str]]:
    return [
        sa.Column("env_id", sa.String(36), nullable=False),
        sa.Column("project_id", sa.String(36), nullable=False),
    ]


def _owner_keys(table: str) -> list[sa.ForeignKeyConstraint]:
    return [
        sa.ForeignKeyConstraint(
            ["env_id"],
            ["environments.id"],
            name=f"fk_{table}_env_id_environments",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.project_id"],
            name=f"fk_{table}_project_id_projects",
            ondelete="CASCADE",
        ),
    ]


def _build_key(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["build_id"], ["builds.build_id"], name=f"fk_{table}_build_id_builds", ondelete="CASCADE"
    )


def upgrade() -> None:
    op.create_table(
        "blobs",
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_blobs"),
    )
    op.create_table(
        "builds",
        sa.Column("build_id", sa.String(36), nullable=False),
        *_owner_columns(),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("build_type", sa.String(32), nullable=False),
        sa.Column("blob_key", sa.String(200), nullable=False),
        sa.Column("storage_backend", sa.String(16), nullable=False),
        sa.Column("deployed", sa.Boolean, nullable=False),
        sa.Column("live", sa.Boolean, nullable=False),
        sa.Column("active", sa.Boolean, nullable=False),
        sa.Column("manifest", sa.JSON, nullable=False),
        sa.Column("deployed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("build_id", name="pk_builds"),
        *_owner_keys("builds"),
    )
    op.create_index("ix_builds_env_id_created_at", "builds", ["env_id", "created_at"])
    op.create_index("ix_builds_project_id_created_at", "builds", ["project_id", "created_at"])
    op.create_table(
        "event_handlers",
        sa.Column("event_handler_id", sa.String(36), nullable=False),
        *_owner_columns(),
        sa.Column("build_id", sa.String(36), nullable=False),
        sa.Column("event_type", sa.String(200), nullable=False),
        sa.Column("ns", sa.String(500), nullable=False),
        sa.Column("var", sa.String(200), nullable=False),
        sa.Column("function", sa.String(700), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("event_handler_id", name="pk_event_handlers"),
        *_owner_keys("event_handlers"),
        _build_key("event_handlers"),
    )
    op.create_index(
        "ix_event_handlers_env_id_event_type", "event_handlers", ["env_id", "event_type"]
    )
    op.create_index("ix_event_handlers_project_id", "event_handlers", ["project_id"])
    op.create_table(
        "schedules",
        sa.Column("schedule_id", sa.String(36), nullable=False),
        *_owner_columns(),
        sa.Column("build_id", sa.String(36), nullable=False),
        sa.Column("cron", sa.String(200), nullable=False),
        sa.Column("tz", sa.String(64), nullable=False),
        sa.Column("ns", sa.String(500), nullable=False),
        sa.Column("var", sa.String(200), nullable=False),
        sa.Column("function", sa.String(700), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("schedule_id", name="pk_schedules"),
        *_owner_keys("schedules"),
        _build_key("schedules"),
    )
    op.create_index("ix_schedules_project_id", "schedules", ["project_id"])


def downgrade() -> None:
    op.drop_index("ix_schedules_project_id", table_name="schedules")
    op.drop_table("schedules")
    op.drop_index("ix_event_handlers_project_id", table_name="event_handlers")
    op.drop_index("ix_event_handlers_env_id_event_type", table_name="event_handlers")
    op.drop_table("event_handlers")
    op.drop_index("ix_builds_project_id_created_at", table_name="builds")
    op.drop_index("ix_builds_env_id_created_at", table_name="builds")
    op.drop_table("builds")
    op.drop_table("blobs")
