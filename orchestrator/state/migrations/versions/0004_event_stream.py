"""The event stream's projection: events keep the id of the stream record they came from, and
the position up to which each stream has been written to SQL.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.add_column(sa.Column("source", sa.String(length=64), nullable=True))
        batch.create_unique_constraint("uq_events_run_id_source", ["run_id", "source"])
    op.create_table(
        "projections",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("position", sa.String(length=64), nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_projections"),
    )


def downgrade() -> None:
    op.drop_table("projections")
    with op.batch_alter_table("events") as batch:
        batch.drop_constraint("uq_events_run_id_source", type_="unique")
        batch.drop_column("source")
