"""Engines and sessions for the run-state database (SQLite or PostgreSQL).

SQLite is the local default and is shared by several processes (the
scheduler and every local worker) writing the same file. To make that safe,
each connection uses WAL (readers never block the writer), waits up to 30 s
for a lock instead of failing, and enforces foreign keys; and every
transaction starts with ``BEGIN IMMEDIATE``, which takes the write lock up
front. Without it a read-then-write transaction can fail with "database is
locked" when another process committed in between, however long the busy
timeout; with it, transactions are serialisable, so a read-modify-write
(claiming an attempt, bumping an epoch) cannot lose an update. The price:
every transaction, reads included, holds the database's write lock until it
ends, so keep sessions short and never hold one open across slow work (a
task, a sleep, a network call). Do not pass ``isolation_level`` for SQLite:
driver-level autocommit bypasses the ``BEGIN IMMEDIATE`` hook.

PostgreSQL is for production; ``postgresql://`` URLs are rewritten to the
psycopg 3 driver. Use ``SELECT ... FOR UPDATE`` (``with_for_update()``) for
read-modify-write there; SQLite ignores it and is serialised anyway.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)

LOCK_TIMEOUT_SECONDS = 30
_POSTGRES_DRIVERS = {"postgres", "postgresql"}


def normalize_url(url: str | URL) -> URL:
    """Parse ``url``; plain ``postgresql://`` (or ``postgres://``) gets the psycopg 3 driver."""
    parsed = make_url(url)
    if parsed.drivername in _POSTGRES_DRIVERS:
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def sqlite_path(url: URL) -> Path | None:
    """The database file of a SQLite URL, or ``None`` for an in-memory or URI-mode database."""
    if url.get_backend_name() != "sqlite":
        return None
    database = url.database or ""
    if database in ("", ":memory:") or url.query.get("uri") == "true":
        return None
    return Path(database)


def make_engine(url: str | URL, **options: Any) -> Engine:
    """Return an engine for ``url`` configured for this project's concurrency (see module doc).

    ``options`` are passed on to :func:`sqlalchemy.create_engine`. The URL's
    password is never logged.
    """
    parsed = normalize_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        engine = _sqlite_engine(parsed, **options)
    elif backend == "postgresql":
        # A process paused inside a transaction (SIGSTOP, a cut network) must not hold its row
        # locks for hours: the server ends such a session after a few seconds.
        connect_args = {"options": "-c idle_in_transaction_session_timeout=15000"}
        connect_args.update(options.pop("connect_args", {}))
        engine = create_engine(parsed, pool_pre_ping=True, connect_args=connect_args, **options)
    else:
        engine = create_engine(parsed, **options)
    log.debug("database engine for %s", parsed.render_as_string(hide_password=True))
    return engine


def make_reader_engine(url: str | URL, **options: Any) -> Engine:
    """An engine for reads only, that never takes SQLite's write lock (the web UI's).

    On SQLite its transactions start with a plain (deferred) ``BEGIN`` and its
    connections are ``query_only``: in WAL mode such a reader sees a consistent
    snapshot and neither waits for nor blocks the scheduler and the workers. A
    write through it fails. Other databases get :func:`make_engine`'s engine.
    """
    parsed = normalize_url(url)
    if parsed.get_backend_name() != "sqlite":
        return make_engine(parsed, **options)
    connect_args = {"timeout": LOCK_TIMEOUT_SECONDS, **options.pop("connect_args", {})}
    engine = create_engine(parsed, connect_args=connect_args, **options)
    event.listen(engine, "connect", _configure_sqlite_reader)
    event.listen(engine, "begin", _begin_deferred)
    return engine


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions bound to ``engine``; objects stay readable after commit (no expiry)."""
    return sessionmaker(bind=engine, expire_on_commit=False)


def _sqlite_engine(url: URL, **options: Any) -> Engine:
    path = sqlite_path(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    connect_args = {"timeout": LOCK_TIMEOUT_SECONDS, **options.pop("connect_args", {})}
    engine = create_engine(url, connect_args=connect_args, **options)
    event.listen(engine, "connect", _configure_sqlite_connection)
    event.listen(engine, "begin", _begin_immediate)
    return engine


def _configure_sqlite_connection(dbapi_connection: Any, _record: Any) -> None:
    # The driver's own transaction handling issues a deferred BEGIN only before
    # DML; turn it off so that _begin_immediate controls every transaction.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {LOCK_TIMEOUT_SECONDS * 1000}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


def _configure_sqlite_reader(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # as for writers: the begin hook owns transactions
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {LOCK_TIMEOUT_SECONDS * 1000}")
        cursor.execute("PRAGMA query_only = ON")
    finally:
        cursor.close()


def _begin_deferred(connection: Any) -> None:
    connection.exec_driver_sql("BEGIN")


def _begin_immediate(connection: Any) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")
