"""PostgreSQL's fast paths (psycopg): COPY out into COPY in, and pages as plain tuples.

Without a transform, a PostgreSQL to PostgreSQL copy is COPY out, COPY in:

Each batch's rows stream from ``COPY (SELECT ... keyset bounds ...) TO STDOUT``
on the source straight into ``COPY ... FROM STDIN`` on the destination, in
the batch's transaction, without becoming Python values: binary format when
the source table's column types are the destination's, text otherwise (the
server converts). The batch's end is found first (the key of its last row),
so the cursor is known before any row moves and the fence is checked first,
as on the general path.

Otherwise (a transform, or another destination), a PostgreSQL source's page
is read by psycopg itself (:func:`fetch`: rows made in C, no SQLAlchemy row
per row) and a PostgreSQL destination's rows go in through ``COPY ... FROM
STDIN`` (:func:`copy_in`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Connection, Table

from workers.etl.connections import EtlError
from workers.etl.source import Source


def psycopg_connection(connection: Connection) -> Any | None:
    """The psycopg connection under ``connection`` (in its transaction), ``None`` for another driver."""
    if connection.dialect.name != "postgresql" or connection.dialect.driver != "psycopg":
        return None
    return connection.connection.driver_connection


def fetch(
    reading: Connection, source: Source, cursor: Sequence[Any] | None, upper: Sequence[Any], size: int
) -> list[tuple[Any, ...]]:
    """:meth:`Source.fetch` through psycopg: the same page, as tuples psycopg builds in C."""
    driver = psycopg_connection(reading)
    assert driver is not None
    query = source.page(cursor, upper, size).compile(dialect=reading.dialect)
    with driver.cursor() as rows:
        rows.execute(str(query), {**query.params, **source.params})
        return list(rows.fetchall())


def copy_in(writing: Connection, table: Table, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Write ``rows`` (values in the order of ``columns``) with ``COPY ... FROM STDIN``, in the
    connection's transaction; text format, so the server converts each value to its column's type."""
    driver = psycopg_connection(writing)
    assert driver is not None
    quote = writing.dialect.identifier_preparer
    names = ", ".join(quote.quote(name) for name in columns)
    statement = f"COPY {quote.format_table(table)} ({names}) FROM STDIN"
    with driver.cursor() as cursor, cursor.copy(statement) as copy:
        write = copy.write_row
        for row in rows:
            write(row)


def copy_format(
    reading: Connection, writing: Connection, source: Source, table: Table | None, destination: Table
) -> str | None:
    """``BINARY`` or ``TEXT`` when both ends are PostgreSQL through psycopg, else ``None``."""
    for connection in (reading, writing):
        if connection.dialect.name != "postgresql" or connection.dialect.driver != "psycopg":
            return None
    if table is None:
        return "TEXT"  # a query's column types are not known: let the server convert
    dialect = writing.dialect
    same = all(
        str(table.c[name].type.compile(dialect)) == str(destination.c[name].type.compile(dialect))
        for name in source.columns
    )
    return "BINARY" if same else "TEXT"


def stream(
    reading: Connection,
    writing: Connection,
    source: Source,
    destination: Table,
    bounds: tuple[Sequence[Any] | None, Sequence[Any]],
    form: str,
) -> int:
    """Copy the rows in ``bounds`` (after the cursor, up to the batch's end); return how many."""
    import psycopg

    query = source.page(bounds[0], bounds[1], None).compile(dialect=reading.dialect)
    out_driver = reading.connection.driver_connection
    in_driver = writing.connection.driver_connection
    assert isinstance(out_driver, psycopg.Connection) and isinstance(in_driver, psycopg.Connection)
    # COPY takes no server-side parameters: the key values are merged in by psycopg's own quoting.
    selected = psycopg.ClientCursor(out_driver).mogrify(str(query), {**query.params, **source.params})
    quote = writing.dialect.identifier_preparer
    names = ", ".join(quote.quote(name) for name in source.columns)
    into = f"COPY {quote.format_table(destination)} ({names}) FROM STDIN (FORMAT {form})"
    with (
        out_driver.cursor() as out_cursor,
        in_driver.cursor() as in_cursor,
        out_cursor.copy(f"COPY ({selected}) TO STDOUT (FORMAT {form})") as out_copy,
    ):
        with in_cursor.copy(into) as in_copy:
            for data in out_copy:
                in_copy.write(data)
        copied = in_cursor.rowcount
    if copied < 0:
        raise EtlError("COPY FROM STDIN did not report how many rows it wrote")
    return copied
