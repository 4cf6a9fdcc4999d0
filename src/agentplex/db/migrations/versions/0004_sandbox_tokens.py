"""Sandbox data-plane tokens in a table of their own: every issued token stays valid until its
own expiry (the SDKs refresh tokens freely and keep using the ones they hold).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    # read the tokens first: on SQLite the batch below rebuilds `sandboxes`, and dropping the
    # old table would cascade into a tokens table that already referenced it
    old = sa.table(
        "sandboxes",
        sa.column("token_hash", sa.String),
        sa.column("id", sa.String),
        sa.column("env_id", sa.String),
        sa.column("token_expires_at", sa.DateTime(timezone=True)),
        sa.column("updated_at", sa.DateTime(timezone=True)),
    )
    tokens = bind.execute(
        sa.select(
            old.c.token_hash, old.c.id, old.c.env_id, old.c.token_expires_at, old.c.updated_at
        ).where(old.c.token_hash.is_not(None), old.c.token_expires_at.is_not(None))
    ).all()
    with op.batch_alter_table("sandboxes") as batch:
        batch.drop_constraint("uq_sandboxes_token_hash", type_="unique")
        batch.drop_column("token_hash")
        batch.drop_column("token_expires_at")
    table = op.create_table(
        "sandbox_tokens",
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("sandbox_id", sa.String(64), nullable=False),
        sa.Column("env_id", sa.String(36), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("token_hash", name="pk_sandbox_tokens"),
        sa.ForeignKeyConstraint(
            ["sandbox_id"],
            ["sandboxes.id"],
            name="fk_sandbox_tokens_sandbox_id_sandboxes",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_sandbox_tokens_sandbox_id", "sandbox_tokens", ["sandbox_id"])
    op.create_index("ix_sandbox_tokens_expires_at", "sandbox_tokens", ["expires_at"])
    if tokens:
        op.bulk_insert(
            table,
            [
                {
                    "token_hash": digest,
                    "sandbox_id": sandbox_id,
                    "env_id": env_id,
                    "expires_at": expires,
                    "created_at": created,
                }
                for digest, sandbox_id, env_id, expires, created in tokens
            ],
        )


def downgrade() -> None:
    with op.batch_alter_table("sandboxes") as batch:
        batch.add_column(sa.Column("token_hash", sa.String(64), nullable=True))
        batch.add_column(sa.Column("token_expires_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_unique_constraint("uq_sandboxes_token_hash", ["token_hash"])
    op.drop_index("ix_sandbox_tokens_expires_at", table_name="sandbox_tokens")
    op.drop_index("ix_sandbox_tokens_sandbox_id", table_name="sandbox_tokens")
    op.drop_table("sandbox_tokens")
