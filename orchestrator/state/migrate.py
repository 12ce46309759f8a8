"""Apply the schema migrations at start-up, safely from several processes at once.

Every process that opens the database (scheduler, workers, CLI) may call
:func:`upgrade`; it is idempotent, and concurrent callers are serialised so
exactly one of them applies each migration while the others wait and then
find the schema at head:

* PostgreSQL: a transaction-scoped advisory lock taken before Alembic reads
  its version table; the migrations run in that same transaction (DDL is
  transactional there), so a failed upgrade leaves nothing half-applied.
* SQLite: an exclusive ``flock`` on ``<database file>.lock``, plus the
  engine's ``BEGIN IMMEDIATE`` when the engine came from
  :func:`~orchestrator.state.engine.make_engine`.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import OperationalError

from orchestrator.errors import ClusterUnavailable, OrchestratorError
from orchestrator.state.engine import sqlite_path

if TYPE_CHECKING:
    from alembic.config import Config

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# Any constant unique among the advisory locks of a database; this one is
# crc32(b"orchestrator.state.migrate").
ADVISORY_LOCK_KEY = 0x3ED8_66A9
HEAD = "0005"
"""The newest revision in ``migrations/`` (a test checks it against Alembic's own reading).

A database already there needs no Alembic at all: :func:`upgrade` reads its version row and
returns, and a command that only reads state (``status``, ``runs``...) does not import Alembic
(``bench/cli.py``)."""


class SchemaMismatch(OrchestratorError):
    """The database schema is at a revision this version of the orchestrator does not know."""


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic configuration for the packaged migrations, bound to ``connection`` if given."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest revision shipped with this version of the orchestrator, as Alembic reads it."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - the package always ships migrations
        raise SchemaMismatch("no migrations are packaged")
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or ``None`` when it was never migrated."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine) -> None:
    """Bring the database behind ``engine`` to the head revision (see the module doc).

    Raise :class:`~orchestrator.errors.ClusterUnavailable` when the database
    cannot be reached and :class:`SchemaMismatch` when it was migrated by a
    newer version of the orchestrator.
    """
    if _at_head(engine):
        return
    from alembic import command
    from alembic.util import CommandError

    where = engine.url.render_as_string(hide_password=True)
    try:
        with _file_lock(engine), engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK_KEY})
            command.upgrade(alembic_config(connection), "head")
    except OperationalError as exc:
        raise _unreachable(engine, exc) from exc
    except CommandError as exc:
        raise SchemaMismatch(
            f"the database {where} has a schema this version does not know ({exc}); upgrade the orchestrator"
        ) from exc
    log.debug("database %s is at revision %s", where, HEAD)


def _at_head(engine: Engine) -> bool:
    """Whether the database's version row says :data:`HEAD` (False when it has no version table
    yet, or is a SQLite file not created yet: the full path creates it).

    Raise :class:`~orchestrator.errors.ClusterUnavailable` when the database cannot be reached.
    """
    path = sqlite_path(engine.url)
    if path is not None and not path.exists():
        return False
    try:
        with engine.connect() as connection:
            if not engine.dialect.has_table(connection, "alembic_version"):
                return False
            versions = connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    except OperationalError as exc:
        raise _unreachable(engine, exc) from exc
    return versions == [HEAD]


def _unreachable(engine: Engine, exc: OperationalError) -> ClusterUnavailable:
    where = engine.url.render_as_string(hide_password=True)
    return ClusterUnavailable(f"cannot migrate the database {where}: {exc.orig}")


@contextlib.contextmanager
def _file_lock(engine: Engine) -> Iterator[None]:
    """Hold an exclusive lock on a file next to a SQLite database; a no-op otherwise."""
    path = sqlite_path(engine.url)
    if path is None:
        yield
        return
    lock_path = path.with_name(path.name + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
