"""Keyset pages of a copy's source: a table or a query, in the total order of its key.

Each page is ``WHERE key > cursor AND key <= upper ORDER BY key LIMIT batch``
(a row comparison for a composite key), so a page costs the same wherever it
is in the table, and the database compares keys (collations included) the
same way in the WHERE and the ORDER BY. The upper bound is frozen when the
copy starts; rows added above it later are not copied by this run.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    FromClause,
    MetaData,
    Select,
    Table,
    and_,
    column,
    func,
    inspect,
    literal,
    or_,
    select,
    text,
    tuple_,
)
from sqlalchemy.exc import NoSuchTableError

from orchestrator.packages.etl import CopySource
from workers.etl.connections import EtlError


def split_table(name: str) -> tuple[str | None, str]:
    schema, _, table = name.rpartition(".")
    return schema or None, table


def reflect(connection: Connection, name: str, connection_name: str) -> Table:
    schema, table = split_table(name)
    try:
        return Table(table, MetaData(), schema=schema, autoload_with=connection)
    except NoSuchTableError as exc:
        raise EtlError(f"table {name!r} not found on connection {connection_name!r}") from exc


@dataclass
class Source:
    """A copy's source as a selectable with its columns and key columns."""

    origin: FromClause
    columns: list[str]
    key: list[ColumnElement[Any]]
    params: dict[str, Any]

    def upper(self, connection: Connection) -> tuple[Any, ...] | None:
        """The largest key now (``None`` for an empty source): the copy stops there."""
        query = select(*self.key).select_from(self.origin).order_by(*(k.desc() for k in self.key)).limit(1)
        row = connection.execute(query, self.params).first()
        return None if row is None else tuple(row)

    def has_null_key(self, connection: Connection) -> bool:
        query = select(literal(1)).select_from(self.origin).where(or_(*(k.is_(None) for k in self.key)))
        return connection.execute(query.limit(1), self.params).first() is not None

    def page(self, cursor: Sequence[Any] | None, upper: Sequence[Any], size: int | None) -> Select[Any]:
        """The rows after ``cursor`` up to ``upper`` in key order, at most ``size`` of them."""
        query = (
            select(*(self.origin.c[name] for name in self.columns))
            .where(self.bounds(cursor, upper))
            .order_by(*self.key)
        )
        return query if size is None else query.limit(size)

    def bounds(self, cursor: Sequence[Any] | None, upper: Sequence[Any]) -> ColumnElement[bool]:
        """``key > cursor AND key <= upper`` (a row comparison for a composite key)."""
        bounds = [_compare(self.key, upper, "<=")]
        if cursor is not None:
            bounds.append(_compare(self.key, cursor, ">"))
        return and_(*bounds)

    def batch_end(
        self, connection: Connection, cursor: Sequence[Any] | None, upper: Sequence[Any], size: int
    ) -> tuple[Any, ...] | None:
        """The key of the ``size``-th row after ``cursor``; ``None`` when fewer rows are left."""
        query = select(*self.key).select_from(self.origin).where(self.bounds(cursor, upper))
        row = connection.execute(query.order_by(*self.key).offset(size - 1).limit(1), self.params).first()
        return None if row is None else tuple(row)

    def remaining(self, connection: Connection, cursor: Sequence[Any] | None, upper: Sequence[Any]) -> int:
        query = select(func.count()).select_from(self.origin).where(self.bounds(cursor, upper))
        return int(connection.execute(query, self.params).scalar_one())

    def fetch(
        self, connection: Connection, cursor: Sequence[Any] | None, upper: Sequence[Any], size: int
    ) -> list[tuple[Any, ...]]:
        """The next page as tuples in the order of :attr:`columns` (dicts only when needed)."""
        result = connection.execute(self.page(cursor, upper, size), self.params)
        return list(map(tuple, result.fetchall()))


def _compare(key: list[ColumnElement[Any]], values: Sequence[Any], operator: str) -> ColumnElement[bool]:
    if len(key) == 1:
        return key[0].operate(_OPERATORS[operator], values[0])
    return tuple_(*key).operate(_OPERATORS[operator], tuple_(*(literal(v) for v in values)))


_OPERATORS: Mapping[str, Any] = {"<=": operator.le, ">": operator.gt}


def open_source(
    connection: Connection, spec: CopySource, connection_name: str, item: Any, *, probing: bool = False
) -> tuple[Source, Table | None]:
    """The source of ``spec`` on ``connection``; its reflected table for a table source.

    ``probing`` (validation, the item maybe unknown): ``:item`` is bound even to ``None`` (NULL).
    """
    if spec.table is not None:
        table = reflect(connection, spec.table, connection_name)
        missing = [k for k in spec.key if k not in table.c]
        if missing:
            raise EtlError(f"source {spec.table!r} has no key column(s) {', '.join(map(repr, missing))}")
        # Plain str names: SQLAlchemy's quoted_name carries a __dict__, and a dict keyed by one is
        # tracked by the garbage collector (a transform's rows would cost full collections).
        columns = [str(col.key) for col in table.c]
        return Source(table, columns, [table.c[k] for k in spec.key], {}), table
    assert spec.query is not None
    params = {"item": item} if (item is not None or probing) and ":item" in spec.query else {}
    probe = text(f"SELECT * FROM ({spec.query}) AS orchestrator_source WHERE 1 = 0")  # noqa: S608 - the package's own query
    columns = list(connection.execute(probe, params).keys())
    missing = [k for k in spec.key if k not in columns]
    if missing:
        raise EtlError(f"source query has no key column(s) {', '.join(map(repr, missing))}; it has {columns}")
    origin = text(spec.query).columns(*(column(name) for name in columns)).subquery("orchestrator_source")
    return Source(origin, columns, [origin.c[k] for k in spec.key], params), None


def check_unique_key(connection: Connection, table: Table, key: Sequence[str]) -> None:
    """Refuse a key that no primary key, unique constraint or unique index makes unique.

    Keyset paging with a key that has ties would skip the tied rows at a page's edge.
    """
    inspector = inspect(connection)
    schema, name = table.schema, table.name
    unique: list[set[str]] = [set(inspector.get_pk_constraint(name, schema=schema)["constrained_columns"])]
    unique += [set(c["column_names"]) for c in inspector.get_unique_constraints(name, schema=schema)]
    unique += [
        {c for c in i["column_names"] if c is not None}
        for i in inspector.get_indexes(name, schema=schema)
        if i["unique"]
    ]
    if not any(cols and cols <= set(key) for cols in unique):
        raise EtlError(
            f"key {list(key)} of source {table.fullname!r} is not unique: keyset paging needs the "
            "primary key or the columns of a unique constraint (a tie at a page's edge would lose rows)"
        )


def check_null_keys(connection: Connection, source: Source, table: Table | None, key: Sequence[str]) -> None:
    """Refuse NULLs in a key column (a NULL key cannot be ordered: its row would be skipped)."""
    nullable = table is None or any(table.c[k].nullable for k in key)
    if nullable and source.has_null_key(connection):
        raise EtlError(f"the source has NULLs in key column(s) {list(key)}: a key must be NOT NULL")


def check_columns(columns: Iterable[str], destination: Table) -> None:
    """Refuse columns the destination does not have."""
    extra = [name for name in columns if name not in destination.c]
    if extra:
        raise EtlError(
            f"columns that do not match: {', '.join(map(repr, extra))} not in destination "
            f"{destination.fullname!r} (it has {', '.join(destination.c.keys())})"
        )
