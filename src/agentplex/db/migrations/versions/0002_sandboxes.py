"""Sandboxes: the records of the Hopx lifecycle.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sandboxes",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("env_id", sa.String(36), nullable=False),
        sa.Column("template_id", sa.String(100), nullable=False),
        sa.Column("template_name", sa.String(100), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("status_reason", sa.String(500), nullable=True),
        sa.Column("isolation", sa.String(16), nullable=False),
        sa.Column("internet_access", sa.Boolean, nullable=False),
        sa.Column("timeout_seconds", sa.Integer, nullable=True),
        sa.Column("resources", sa.JSON, nullable=False),
        sa.Column("env_vars", sa.JSON, nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=True),
        sa.Column("token_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_sandboxes"),
        sa.UniqueConstraint("token_hash", name="uq_sandboxes_token_hash"),
        sa.ForeignKeyConstraint(
            ["env_id"],
            ["environments.id"],
            name="fk_sandboxes_env_id_environments",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_sandboxes_env_id_created_at", "sandboxes", ["env_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_sandboxes_env_id_created_at", table_name="sandboxes")
    op.drop_table("sandboxes")
