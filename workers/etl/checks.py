"""``orchestrator validate --connect``: what only the databases can tell about a package's ETL tasks.

Each connection the package's tasks name is opened (its URL and password
rendered as on a worker: ``--var``, ``ORCHESTRATOR_VAR_<NAME>``,
``ORCHESTRATOR_CONN_<NAME>_PASSWORD``) and each ``copy`` is checked the way it
would be before its first batch (:mod:`workers.etl.source`): the tables exist,
the key columns exist, a table's key is unique, no key column holds NULL, the
source's columns exist in the destination. Read-only: reflection and
``SELECT`` statements in transactions that are rolled back. Every problem is
reported, each with its task's id; errors are masked like a task's (no password).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from sqlalchemy import Connection, Table
from sqlalchemy.exc import SQLAlchemyError

from orchestrator.errors import Issue
from orchestrator.packages.etl import CopySpec
from orchestrator.packages.model import Package, Task
from workers.etl.connections import Connections, EnginePool, EtlError
from workers.etl.source import check_columns, check_null_keys, check_unique_key, open_source, reflect

T = TypeVar("T")


class _Checker:
    """The checks of one package; :attr:`issues` collects what they find."""

    def __init__(self, package: Package, variables: Mapping[str, Any], pool: EnginePool) -> None:
        self.package = package
        self.connections = Connections(package.connections, variables, pool)
        self.issues: list[Issue] = []
        self.unusable: set[str] = set()

    def connect_all(self) -> None:
        """Open each declared connection once: one issue per connection that does not open."""
        users: dict[str, list[str]] = {name: [] for name in self.package.connections}
        for task in self.package.tasks:
            for name in _connections_of(task):
                users.setdefault(name, []).append(task.id)
        for name, tasks in users.items():
            try:
                with self.connections.engine(name).connect() as connection:
                    connection.rollback()
            except EtlError as exc:
                self._unusable(name, tasks, str(exc))
            except SQLAlchemyError as exc:
                self._unusable(name, tasks, str(self.connections.error(name, exc, "connecting")))

    def _unusable(self, name: str, tasks: list[str], message: str) -> None:
        self.unusable.add(name)
        used = f" (used by {', '.join(tasks)})" if tasks else ""
        self.issues.append(Issue(f"connections.{name}", message + used))

    def check_copy(self, task: Task, spec: CopySpec) -> None:
        if {spec.source.connection, spec.destination.connection} & self.unusable:
            return  # reported with the connection
        destination = self._side(
            f"task {task.id!r}",
            "destination",
            spec.destination.connection,
            lambda connection: reflect(connection, spec.destination.table, spec.destination.connection),
        )
        for item in _items(task, spec):
            check = functools.partial(_check_source, spec=spec, item=item, destination=destination)
            known = item is not None and item is not _UNKNOWN
            where = f"task {task.id!r}" + (f" item {item!r}" if known else "")
            self._side(where, "source", spec.source.connection, check)

    def _side(self, where: str, part: str, name: str, check: Callable[[Connection], T]) -> T | None:
        """``check`` on a connection of ``name``, rolled back; what it raises becomes an issue."""
        path = f"{where}: copy.{part}"
        try:
            with self.connections.engine(name).connect() as connection:
                try:
                    return check(connection)
                finally:
                    connection.rollback()  # read-only: nothing a check did is kept
        except EtlError as exc:
            self.issues.append(Issue(path, str(exc)))
        except SQLAlchemyError as exc:
            self.issues.append(Issue(path, str(self.connections.error(name, exc, f"checking the {part}"))))
        return None


class _Unknown:
    """The item of a foreach whose items are known only at run time."""


_UNKNOWN = _Unknown()


def _items(task: Task, spec: CopySpec) -> list[Any]:
    """The items to check a copy's source with: each item of a literal foreach list when its
    query uses ``:item``, else one check (``:item`` bound to NULL when the items are unknown)."""
    query = spec.source.query
    if query is None or ":item" not in query:
        return [None]
    return list(task.foreach) if isinstance(task.foreach, list) else [_UNKNOWN]


def _check_source(connection: Connection, spec: CopySpec, item: Any, destination: Table | None) -> None:
    """What a copy checks before its first batch, on its source (see :meth:`workers.etl.copy._Copy.open`)."""
    known = item is not _UNKNOWN
    source, table = open_source(
        connection, spec.source, spec.source.connection, item if known else None, probing=True
    )
    if destination is not None and spec.transform is None:
        check_columns(source.columns, destination)
    if table is not None:
        check_unique_key(connection, table, spec.source.key)
    if known:
        check_null_keys(connection, source, table, spec.source.key)


def _connections_of(task: Task) -> list[str]:
    if task.sql is not None:
        return [task.sql.connection]
    if task.copy_ is not None:
        return list(dict.fromkeys((task.copy_.source.connection, task.copy_.destination.connection)))
    return []


def check_connected(package: Package, variables: Mapping[str, Any]) -> list[Issue]:
    """Every problem the databases show in ``package``'s ETL tasks (empty when there is none).

    ``variables``: the run's, resolved (defaults, environment, ``--var``).
    """
    pool = EnginePool()
    try:
        checker = _Checker(package, variables, pool)
        checker.connect_all()
        for task in package.tasks:
            if task.copy_ is not None:
                checker.check_copy(task, task.copy_)
        return checker.issues
    finally:
        pool.close()
