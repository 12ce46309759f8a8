"""Placeholder for the catalog and schedules migration of the ops branch (issue 15).

It changes nothing. It exists so that ``0003`` can name ``0002`` as its parent, as
agreed; when the ops branch's ``0002`` is merged, this file is deleted.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Nothing: see the module docstring."""


def downgrade() -> None:
    """Nothing: see the module docstring."""
