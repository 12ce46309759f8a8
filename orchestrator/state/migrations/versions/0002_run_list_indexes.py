"""Indexes of the run list: newest first, by state, by package (keyset pagination of the web UI).

Revision ID: 0002_run_list
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002_run_list"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEXES = {
    "ix_runs_submitted_at_id": ["submitted_at", "id"],
    "ix_runs_state_submitted_at_id": ["state", "submitted_at", "id"],
    "ix_runs_package_submitted_at_id": ["package", "submitted_at", "id"],
}


def upgrade() -> None:
    for name, columns in INDEXES.items():
        op.create_index(name, "runs", columns)


def downgrade() -> None:
    for name in INDEXES:
        op.drop_index(name, table_name="runs")
