"""Agent sessions and their messages (parts stored inside each message's ``data``).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sessions",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("env_id", sa.String(36), nullable=False),
        sa.Column("parent_id", sa.String(64), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("channel", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(200), nullable=True),
        sa.Column("title", sa.Text, nullable=False),
        sa.Column("directory", sa.Text, nullable=False),
        sa.Column("slug", sa.String(100), nullable=False),
        sa.Column("project_id", sa.String(100), nullable=False),
        sa.Column("created", sa.BigInteger, nullable=False),
        sa.Column("updated", sa.BigInteger, nullable=False),
        sa.Column("last_activity", sa.BigInteger, nullable=False),
        sa.Column("terminated", sa.BigInteger, nullable=True),
        sa.Column("model_provider", sa.String(100), nullable=True),
        sa.Column("model_id", sa.String(200), nullable=True),
        sa.Column("sandbox_id", sa.String(64), nullable=True),
        sa.Column("tokens", sa.JSON, nullable=False),
        sa.Column("cost", sa.Float, nullable=False),
        sa.Column("turn_count", sa.Integer, nullable=False),
        sa.Column("metadata", sa.JSON, nullable=False),
        sa.Column("permission", sa.JSON, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_sessions"),
        sa.ForeignKeyConstraint(
            ["env_id"],
            ["environments.id"],
            name="fk_sessions_env_id_environments",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_sessions_env_id_status", "sessions", ["env_id", "status"])
    op.create_index("ix_sessions_env_id_created", "sessions", ["env_id", "created"])
    op.create_index("ix_sessions_parent_id", "sessions", ["parent_id"])
    op.create_table(
        "session_messages",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("env_id", sa.String(36), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("created", sa.BigInteger, nullable=False),
        sa.Column("completed", sa.BigInteger, nullable=True),
        sa.Column("data", sa.JSON, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_session_messages"),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["sessions.id"],
            name="fk_session_messages_session_id_sessions",
            ondelete="CASCADE",
        ),
    )
    op.create_index(
        "ix_session_messages_session_id_created_id",
        "session_messages",
        ["session_id", "created", "id"],
    )


def downgrade() -> None:
    op.drop_index("ix_session_messages_session_id_created_id", table_name="session_messages")
    op.drop_table("session_messages")
    op.drop_index("ix_sessions_parent_id", table_name="sessions")
    op.drop_index("ix_sessions_env_id_created", table_name="sessions")
    op.drop_index("ix_sessions_env_id_status", table_name="sessions")
    op.drop_table("sessions")
