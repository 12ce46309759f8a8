"""Task logs kept with the run: the lines tasks logged, and how many of each task's were dropped.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "task_logs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(length=128), nullable=False),
        sa.Column("task_id", sa.String(length=64), nullable=False),
        sa.Column("item", sa.Text(), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("try_number", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("at", TIMESTAMP, nullable=False),
        sa.Column("level", sa.String(length=16), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_task_logs"),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name="fk_task_logs_run_id_runs", ondelete="CASCADE"),
        sa.UniqueConstraint("run_id", "source", name="uq_task_logs_run_id_source"),
    )
    op.create_index("ix_task_logs_run_id_attempt_seq", "task_logs", ["run_id", "attempt", "seq"])
    op.create_index(
        "ix_task_logs_run_id_task_id_attempt_seq", "task_logs", ["run_id", "task_id", "attempt", "seq"]
    )
    op.create_table(
        "task_log_trims",
        sa.Column("run_id", sa.String(length=128), nullable=False),
        sa.Column("task_id", sa.String(length=64), nullable=False),
        sa.Column("dropped", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "task_id", name="pk_task_log_trims"),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name="fk_task_log_trims_run_id_runs", ondelete="CASCADE"
        ),
    )


def downgrade() -> None:
    op.drop_table("task_log_trims")
    op.drop_index("ix_task_logs_run_id_task_id_attempt_seq", table_name="task_logs")
    op.drop_index("ix_task_logs_run_id_attempt_seq", table_name="task_logs")
    op.drop_table("task_logs")
