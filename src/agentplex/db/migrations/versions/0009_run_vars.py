"""Run vars: the values a handler captures through the SDK (``capture``); and events and runs
found by their stream (a stream's subscribers look its owner up).

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "run_vars",
        sa.Column("var_id", sa.String(36), nullable=False),
        sa.Column("run_id", sa.String(36), nullable=False),
        sa.Column("env_id", sa.String(36), nullable=False),
        sa.Column("ns", sa.String(500), nullable=False),
        sa.Column("var", sa.String(200), nullable=False),
        sa.Column("value", sa.JSON, nullable=True),
        sa.Column("meta", sa.JSON, nullable=True),
        sa.Column("start_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("stop_time", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("var_id", name="pk_run_vars"),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.run_id"], name="fk_run_vars_run_id_runs", ondelete="CASCADE"
        ),
    )
    op.create_index("ix_run_vars_run_id", "run_vars", ["run_id"])
    op.create_index("ix_events_stream_id", "events", ["stream_id"])
    op.create_index("ix_runs_stream_id", "runs", ["stream_id"])


def downgrade() -> None:
    op.drop_index("ix_runs_stream_id", table_name="runs")
    op.drop_index("ix_events_stream_id", table_name="events")
    op.drop_index("ix_run_vars_run_id", table_name="run_vars")
    op.drop_table("run_vars")
