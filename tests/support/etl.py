"""ETL fixtures: an empty database per test on SQLite, PostgreSQL and MariaDB, and table helpers.

``etl_url`` is parametrised over the three. PostgreSQL runs when
``ORCHESTRATOR_TEST_DATABASE_URL`` names a server, MariaDB/MySQL when
``ORCHESTRATOR_TEST_MYSQL_URL`` does (CI: ``mysql+pymysql://root@127.0.0.1:3306/test``);
each is skipped with the reason otherwise. Every test gets its own database,
created and dropped here, so parallel runs do not collide.
"""

from __future__ import annotations

import contextlib
import decimal
import hashlib
import logging
import os
import threading
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import NullPool

from orchestrator.packages.model import Package
from tests.support.databases import fresh_postgresql_database, postgresql_admin_url
from workers.context import Progress, TaskContext, TaskVariables

MYSQL_URL_VARIABLE = "ORCHESTRATOR_TEST_MYSQL_URL"
BACKENDS = ["sqlite", "postgresql", "mariadb"]


def mysql_admin_url() -> URL | None:
    value = os.environ.get(MYSQL_URL_VARIABLE, "").strip()
    return make_url(value) if value else None


@contextlib.contextmanager
def fresh_mysql_database(admin_url: URL) -> Iterator[str]:
    name = f"etl_test_{uuid.uuid4().hex[:16]}"
    admin = create_engine(admin_url, poolclass=NullPool)
    try:
        with admin.begin() as connection:
            connection.execute(text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
        try:
            yield admin_url.set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.begin() as connection:
                connection.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
    finally:
        admin.dispose()


@contextlib.contextmanager
def database(backend: str, tmp_path: Path, name: str = "etl") -> Iterator[str]:
    """A fresh, empty database of ``backend``; skips the test when its server is not configured."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / f'{name}.db'}"
    elif backend == "postgresql":
        admin = postgresql_admin_url()
        if admin is None:
            pytest.skip("ORCHESTRATOR_TEST_DATABASE_URL is not set: no PostgreSQL server to copy with")
        with fresh_postgresql_database(admin) as url:
            yield url
    else:
        admin = mysql_admin_url()
        if admin is None:
            pytest.skip(f"{MYSQL_URL_VARIABLE} is not set: no MariaDB/MySQL server to copy with")
        with fresh_mysql_database(admin) as url:
            yield url


@pytest.fixture(params=BACKENDS)
def etl_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of the parametrised backend, private to the test."""
    with database(request.param, tmp_path) as url:
        yield url


def execute(url: str, *statements: str, params: Sequence[dict[str, Any]] | dict[str, Any] = ()) -> None:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            for statement in statements:
                connection.execute(text(statement), params or None)
    finally:
        engine.dispose()


def rows(url: str, query: str) -> list[tuple[Any, ...]]:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            return [tuple(row) for row in connection.execute(text(query))]
    finally:
        engine.dispose()


def checksum(url: str, table: str, key: str) -> tuple[int, int, str]:
    """(row count, distinct keys, sha256 of every row in key order): equal tables, equal checksums."""
    found = rows(url, f"SELECT * FROM {table} ORDER BY {key}")
    digest = hashlib.sha256(repr([tuple(_canonical(v) for v in row) for row in found]).encode()).hexdigest()
    keys = {row[0] for row in found} if "," not in key else {row[:2] for row in found}
    return len(found), len(keys), digest


def _canonical(value: Any) -> str:
    """The same text for the same number whatever the engine gave (SQLite: 1.5, others: 1.50)."""
    if isinstance(value, int | float | decimal.Decimal) and not isinstance(value, bool):
        return str(decimal.Decimal(str(value)).normalize())
    return str(value)


def context(
    package: Package,
    *,
    run_id: str = "run-1",
    task_id: str = "copy",
    epoch: int = 1,
    saved: Any = None,
    item: Any = None,
    saves: list[Any] | None = None,
) -> tuple[TaskContext, list[Any]]:
    """A task context for calling ETL functions directly; the list (``saves``) collects progress saves."""
    saves = [] if saves is None else saves
    stopped = threading.Event()
    ctx = TaskContext(
        run_id=run_id,
        package=package.name,
        task_id=task_id,
        attempt=epoch,
        epoch=epoch,
        params={},
        vars=TaskVariables(package, {}),
        outputs={},
        item=item,
        progress=Progress(saved, saves.append, stopped),
        idempotency_key=f"{run_id}:{task_id}",
        log=logging.LoggerAdapter(logging.getLogger("test"), {}),
        _cancelled=stopped,
    )
    return ctx, saves
