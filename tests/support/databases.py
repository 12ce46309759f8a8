"""Database fixtures: every test that takes ``database_url`` runs on SQLite and PostgreSQL.

PostgreSQL runs when ``ORCHESTRATOR_TEST_DATABASE_URL`` names a server (CI
sets ``postgresql+psycopg://postgres@127.0.0.1:5432/test``) and is skipped
otherwise. Each PostgreSQL test gets a fresh database with a unique name,
created through that URL and dropped afterwards, so tests are isolated and
can run concurrently.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool

from orchestrator.state import make_engine, normalize_url, upgrade

DATABASE_URL_VARIABLE = "ORCHESTRATOR_TEST_DATABASE_URL"


def postgresql_admin_url() -> URL | None:
    """The URL from ``ORCHESTRATOR_TEST_DATABASE_URL``, or ``None`` when it is unset."""
    value = os.environ.get(DATABASE_URL_VARIABLE, "").strip()
    return normalize_url(value) if value else None


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty database of the parametrised backend, private to the test."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'state.db'}"
        return
    admin_url = postgresql_admin_url()
    if admin_url is None:
        pytest.skip(f"{DATABASE_URL_VARIABLE} is not set: no PostgreSQL server to test against")
    with fresh_postgresql_database(admin_url) as url:
        yield url


@pytest.fixture
def database_engine(database_url: str) -> Iterator[Engine]:
    """An engine on ``database_url`` migrated to head; disposed after the test."""
    engine = make_engine(database_url)
    upgrade(engine)
    yield engine
    engine.dispose()


@contextlib.contextmanager
def fresh_postgresql_database(admin_url: URL) -> Iterator[str]:
    """Create a uniquely named database through ``admin_url``, yield its URL, then drop it.

    The drop uses ``WITH (FORCE)`` (PostgreSQL 13+), so connections a test
    left open do not keep the database alive.
    """
    name = f"orchestrator_test_{uuid.uuid4().hex[:16]}"
    admin = make_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield admin_url.set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()
