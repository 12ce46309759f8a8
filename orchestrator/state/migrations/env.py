"""Alembic environment of the orchestrator's schema.

:func:`orchestrator.state.upgrade` passes an open connection, already inside
the transaction (and holding the lock) it manages, as
``config.attributes["connection"]``. Without one (the ``alembic`` command
line, for developers) the URL comes from ``ORCHESTRATOR_DATABASE_URL``.
"""

from __future__ import annotations

from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy import Connection
from sqlalchemy.types import TypeDecorator

from orchestrator.runtime.settings import Settings
from orchestrator.state.engine import make_engine
from orchestrator.state.models import Base


def render_item(kind: str, obj: Any, _context: AutogenContext) -> str | Literal[False]:
    """Render the project's column types as their plain SQL types in generated revisions.

    A revision must keep meaning what it meant when it was written, so it
    does not import model code that may change later.
    """
    if kind == "type" and isinstance(obj, TypeDecorator):
        return f"sa.{obj.impl_instance!r}"
    return False


def run_migrations(connection: Connection) -> None:
    """Run the pending migrations on ``connection``, in its current transaction if any."""
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        compare_type=True,
        render_item=render_item,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def main() -> None:
    if context.is_offline_mode():
        raise SystemExit("offline (--sql) migrations are not supported; run them online")
    connection = context.config.attributes.get("connection")
    if connection is not None:
        run_migrations(connection)
        return
    engine = make_engine(Settings().database_url.get_secret_value())
    try:
        with engine.connect() as connection:
            run_migrations(connection)
            connection.commit()
    finally:
        engine.dispose()


main()
