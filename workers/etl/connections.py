"""The package's connections: engines pooled for an attempt, seen by each unit through its variables.

URLs and passwords are rendered from the run's variables on the worker (a
password from a sensitive variable, else ``ORCHESTRATOR_CONN_<NAME>_PASSWORD``);
every error that leaves this module is worded without them (:meth:`Connections.error`).
An attempt owns one :class:`EnginePool`: its units (tasks, foreach items, in
parallel threads) share one engine per connection, opened on first use and
disposed when the attempt ends (:meth:`EnginePool.close`).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Mapping
from typing import Any

from sqlalchemy import URL, Engine, create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.pool import QueuePool

from orchestrator.observability.masking import Masker
from orchestrator.packages.etl import Connection, password_variable
from orchestrator.packages.templating import TemplateError, render
from workers.errors import TaskError


class EtlError(TaskError):
    """A ``sql`` or ``copy`` task failed: a database error, a missing table, a bad key..."""


class EnginePool:
    """One engine per connection for the units of one attempt; thread-safe.

    Engines are keyed by the connection's name and its rendered URL (with its
    password, hashed): a unit whose variables render another URL gets its own.
    :meth:`close` disposes of them all; an engine asked for afterwards is refused.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._engines: dict[tuple[str, str], Engine] = {}
        self._closed = False

    def engine(self, name: str, url: URL) -> Engine:
        key = (name, hashlib.sha256(url.render_as_string(hide_password=False).encode()).hexdigest())
        with self._lock:
            if self._closed:
                raise EtlError(f"connection {name!r}: the attempt is over, its connections are closed")
            engine = self._engines.get(key)
            if engine is None:
                engine = self._engines[key] = _create(url)
            return engine

    @property
    def closed(self) -> bool:
        with self._lock:
            return self._closed

    @property
    def open(self) -> int:
        """Engines created and not yet disposed."""
        with self._lock:
            return len(self._engines)

    def close(self) -> None:
        """Dispose of every engine (connections in use close when they are given back)."""
        with self._lock:
            self._closed = True
            engines, self._engines = list(self._engines.values()), {}
        for engine in engines:
            engine.dispose()


def _create(url: URL) -> Engine:
    # hide_parameters: row values stay out of error messages (they may be personal data).
    engine = create_engine(url, hide_parameters=True, pool_pre_ping=True)
    if isinstance(engine.pool, QueuePool):
        # No cap beyond the 5 connections kept open: parallel units of one attempt share the
        # engine, and a cap would make one wait for another's connection (and time out).
        engine = create_engine(url, hide_parameters=True, pool_pre_ping=True, max_overflow=-1)
    return engine


class Connections:
    """The package's connections as one unit sees them (its variables render their URLs).

    Engines come from ``pool``, the attempt's, which outlives the unit; without one the
    unit has a pool of its own, disposed of by :meth:`close`.
    """

    def __init__(
        self,
        declared: Mapping[str, Connection],
        variables: Mapping[str, Any],
        pool: EnginePool | None = None,
    ) -> None:
        self._declared = declared
        self._variables = variables
        self._own = pool is None
        self._pool = EnginePool() if pool is None else pool
        self._engines: dict[str, Engine] = {}
        self._secrets: list[str] = []

    def engine(self, name: str) -> Engine:
        if name not in self._engines:
            self._engines[name] = self._open(name)
        return self._engines[name]

    def _open(self, name: str) -> Engine:
        declared = self._declared.get(name)
        if declared is None:
            raise EtlError(f"unknown connection {name!r}")
        try:
            url = str(render(declared.url, self._variables, {}))
            given = render(declared.password, self._variables, {}) if declared.password else None
        except TemplateError as exc:
            raise EtlError(f"connection {name!r}: {exc}") from exc
        password = str(given) if given is not None else os.environ.get(password_variable(name))
        if password:
            self._secrets.append(password)
        try:
            parsed = make_url(url)
            if parsed.password:
                self._secrets.append(str(parsed.password))
            if password:
                parsed = parsed.set(password=password)
            return self._pool.engine(name, parsed)
        except (ArgumentError, ValueError) as exc:
            raise EtlError(f"connection {name!r}: not a usable SQLAlchemy URL") from exc
        except NoSuchModuleError as exc:
            raise EtlError(f"connection {name!r}: no driver for this URL ({exc})") from exc

    def error(self, name: str, exc: SQLAlchemyError, doing: str) -> EtlError:
        """``exc`` as a task error naming the connection, with any password masked."""
        original = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
        text = str(original).strip().splitlines()[0] if str(original).strip() else ""
        message = f"connection {name!r}: {doing}: {type(original).__name__}: {text}"
        return EtlError(self.mask(message))

    def mask(self, text: str) -> str:
        return Masker(self._secrets)(text)

    def close(self) -> None:
        """The unit is done: its own pool's engines are disposed of; the attempt's stay open,
        unless the attempt ended first (a unit left running past its stop): then what this
        unit opened since is closed too."""
        if self._own:
            self._pool.close()
        elif self._pool.closed:
            for engine in self._engines.values():
                engine.dispose()
        self._engines.clear()
