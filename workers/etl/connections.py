"""The package's connections as one unit uses them: opened on first use, closed when it ends.

URLs and passwords are rendered from the run's variables on the worker (a
password from a sensitive variable, else ``ORCHESTRATOR_CONN_<NAME>_PASSWORD``);
every error that leaves this module is worded without them (:meth:`Connections.error`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, SQLAlchemyError

from orchestrator.observability.masking import Masker
from orchestrator.packages.etl import Connection, password_variable
from orchestrator.packages.templating import TemplateError, render
from workers.errors import TaskError


class EtlError(TaskError):
    """A ``sql`` or ``copy`` task failed: a database error, a missing table, a bad key..."""


class Connections:
    """Engines of the package's connections for one unit; :meth:`close` disposes of them."""

    def __init__(self, declared: Mapping[str, Connection], variables: Mapping[str, Any]) -> None:
        self._declared = declared
        self._variables = variables
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
            # hide_parameters: row values stay out of error messages (they may be personal data).
            return create_engine(parsed, hide_parameters=True, pool_pre_ping=True)
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
        for engine in self._engines.values():
            engine.dispose()
        self._engines.clear()
