"""The package catalog, schedules, the schedulers' maintenance claims; runs record their version.

Revision ID: 0003
Revises: 0002_run_list
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002_run_list"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# As in 0001: timezone-aware UTC timestamps, StrEnum values as plain strings.
TIMESTAMP = sa.DateTime(timezone=True)
STATE = sa.String(length=32)


def upgrade() -> None:
    with op.batch_alter_table("runs") as runs:
        runs.add_column(sa.Column("package_version", sa.Integer(), nullable=True))
        runs.create_index("ix_runs_finished_at", ["finished_at"])
    _create_package_versions()
    _create_schedules()
    _create_maintenance()


def downgrade() -> None:
    for table in ("maintenance", "schedules", "package_versions"):
        op.drop_table(table)
    with op.batch_alter_table("runs") as runs:
        runs.drop_index("ix_runs_finished_at")
        runs.drop_column("package_version")


def _create_package_versions() -> None:
    op.create_table(
        "package_versions",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("definition_hash", sa.String(length=64), nullable=False),
        sa.Column("deployed_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("name", "version", name="pk_package_versions"),
        sa.ForeignKeyConstraint(
            ["name", "definition_hash"],
            ["packages.name", "packages.definition_hash"],
            name="fk_package_versions_name_packages",
        ),
    )


def _create_schedules() -> None:
    op.create_table(
        "schedules",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("package", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("cron", sa.String(length=128), nullable=True),
        sa.Column("every_seconds", sa.Integer(), nullable=True),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column("variables", sa.JSON(), nullable=False),
        sa.Column("catchup", STATE, nullable=False),
        sa.Column("overlap", STATE, nullable=False),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("next_slot_at", TIMESTAMP, nullable=True),
        sa.Column("queued_slot_at", TIMESTAMP, nullable=True),
        sa.Column("last_slot_at", TIMESTAMP, nullable=True),
        sa.Column("last_run_id", sa.String(length=128), nullable=True),
        sa.Column("claim_owner", sa.String(length=64), nullable=True),
        sa.Column("claim_until", TIMESTAMP, nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_schedules"),
    )
    op.create_index("ix_schedules_next_slot_at", "schedules", ["next_slot_at"])


def _create_maintenance() -> None:
    op.create_table(
        "maintenance",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("due_at", TIMESTAMP, nullable=False),
        sa.Column("owner", sa.String(length=64), nullable=True),
        sa.Column("started_at", TIMESTAMP, nullable=True),
        sa.Column("finished_at", TIMESTAMP, nullable=True),
        sa.Column("result", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_maintenance"),
    )
