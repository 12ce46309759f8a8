"""The ``copy`` task: keyset batches from a source, each committed with its cursor, exactly once.

For each batch: read the next page of the source after the cursor (up to the
frozen upper bound), transform it if asked, then in **one destination
transaction** insert the rows and move the copy's state row on
(:func:`workers.etl.state.advance`, fenced by the attempt's epoch); then save
the same position as the task's progress in the checkpoint. A resumed copy
reads its position from the destination, which is the truth, so a kill
between the commit and the checkpoint save neither loses nor repeats a row.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Table, insert
from sqlalchemy.exc import SQLAlchemyError

from orchestrator.packages.etl import CopySpec
from orchestrator.packages.model import item_key
from workers.context import TaskContext
from workers.errors import TaskCancelled
from workers.etl.connections import Connections, EtlError
from workers.etl.pgcopy import copy_format, stream
from workers.etl.source import Source, check_unique_key, open_source, reflect
from workers.etl.state import CopyState, advance, claim, ensure_table
from workers.etl.values import decode_key, encode_key

PROGRESS_EVERY = 1.0
"""Seconds between two progress reports of a copy (events: one Redis append each)."""

Transform = Callable[[TaskContext, list[dict[str, Any]]], Iterable[dict[str, Any]]]


@dataclass
class _Copy:
    """One copy task's run in this attempt (see :func:`run_copy`)."""

    spec: CopySpec
    ctx: TaskContext
    connections: Connections
    transform: Transform | None
    counted: Callable[[int], None]
    report: Callable[[dict[str, Any]], None]
    reported: float = 0.0

    @contextlib.contextmanager
    def database(self, name: str, doing: str) -> Iterator[None]:
        try:
            yield
        except SQLAlchemyError as exc:
            raise self.connections.error(name, exc, doing) from exc

    def run(self) -> dict[str, Any]:
        started = time.monotonic()
        source_name = self.spec.source.connection
        destination_name = self.spec.destination.connection
        with self.database(destination_name, "preparing the destination"):
            ensure_table(self.connections.engine(destination_name))
            with self.connections.engine(destination_name).connect() as connection:
                destination = reflect(connection, self.spec.destination.table, destination_name)
        with (
            self.database(source_name, "reading the source"),
            self.connections.engine(source_name).connect() as reading,
        ):
            source, table = self.open(reading, destination)
            state = self.start(reading, source)
            resumed_rows = state.rows
            if state.upper is not None:
                with self.connections.engine(destination_name).connect() as probe:
                    form = None if self.transform else copy_format(reading, probe, source, table, destination)
                if form is not None:
                    state = self.streamed(reading, source, destination, state, form)
                else:
                    state = self.batches(reading, source, destination, state)
        seconds = time.monotonic() - started
        copied = state.rows - resumed_rows
        rate = round(copied / seconds, 1) if seconds > 0 else None
        self.report({"rows": state.rows, "rows_per_second": rate, "done": True})
        return {
            "rows": state.rows,
            "rows_this_attempt": copied,
            "batches": state.batches,
            "seconds": round(seconds, 3),
            "rows_per_second": rate,
        }

    def open(self, reading: Connection, destination: Table) -> tuple[Source, Table | None]:
        spec = self.spec.source
        source, table = open_source(reading, spec, spec.connection, self.ctx.item)
        if self.transform is None:
            _check_columns(source.columns, destination)
        if table is not None:
            check_unique_key(reading, table, spec.key)
        nullable = table is None or any(table.c[k].nullable for k in spec.key)
        if nullable and source.has_null_key(reading):
            raise EtlError(f"the source has NULLs in key column(s) {spec.key}: a key must be NOT NULL")
        return source, table

    def start(self, reading: Connection, source: Source) -> CopyState:
        """Claim the copy's state for this epoch: its cursor, or a new state with a frozen upper bound.

        The first progress save (before any batch) marks the copy as begun in the checkpoint:
        from then on, the destination's state is the truth about how far it got.
        """
        saved = self.ctx.progress.get()
        upper = (
            saved.get("upper")
            if isinstance(saved, dict) and "upper" in saved
            else encode_key(source.upper(reading))
        )
        wanted = CopyState(
            run_id=self.ctx.run_id,
            task=self.ctx.task_id,
            item="" if self.ctx.item is None else item_key(self.ctx.item),
            epoch=self.ctx.epoch,
            upper=upper,
        )
        engine = self.connections.engine(self.spec.destination.connection)
        with self.database(self.spec.destination.connection, "claiming the copy"), engine.begin() as writing:
            state = claim(writing, wanted, fresh=saved is None)
        self.save(state)
        return state

    def batches(self, reading: Connection, source: Source, destination: Table, state: CopyState) -> CopyState:
        started, resumed_rows = time.monotonic(), state.rows
        upper = decode_key(state.upper)
        assert upper is not None
        cursor = decode_key(state.cursor)
        size = self.spec.batch_size
        positions = [source.columns.index(k) for k in self.spec.source.key]
        engine = self.connections.engine(self.spec.destination.connection)
        while True:
            if self.ctx.cancelled:
                raise TaskCancelled(f"copy {self.ctx.task_id!r} stopped: its attempt was cancelled")
            rows = source.fetch(reading, cursor, upper, size)
            if not rows:
                return state
            last = tuple(rows[-1][i] for i in positions)
            out = self.transformed(source.columns, rows, destination)
            with (
                self.database(self.spec.destination.connection, "writing a batch"),
                engine.begin() as writing,
            ):
                # The fence first: a stale attempt learns it at once, before its rows could meet
                # the newer attempt's (a unique key would turn that into a confusing error).
                state = advance(writing, state, len(out), encode_key(last))
                write_rows(writing, destination, source.columns, out)
            self.counted(len(out))
            self.save(state)
            self.progress(state, resumed_rows, started)
            if len(rows) < size:
                return state
            cursor = last

    def streamed(
        self, reading: Connection, source: Source, destination: Table, state: CopyState, form: str
    ) -> CopyState:
        """The PostgreSQL fast path (:mod:`workers.etl.pgcopy`): the same batches, fence and cursor."""
        started, resumed_rows = time.monotonic(), state.rows
        upper = decode_key(state.upper)
        assert upper is not None
        cursor = decode_key(state.cursor)
        size = self.spec.batch_size
        engine = self.connections.engine(self.spec.destination.connection)
        while True:
            if self.ctx.cancelled:
                raise TaskCancelled(f"copy {self.ctx.task_id!r} stopped: its attempt was cancelled")
            end = source.batch_end(reading, cursor, upper, size)
            expected = size if end is not None else source.remaining(reading, cursor, upper)
            if expected == 0:
                return state
            last = end if end is not None else tuple(upper)
            with (
                self.database(self.spec.destination.connection, "writing a batch"),
                engine.begin() as writing,
            ):
                state = advance(writing, state, expected, encode_key(last))
                copied = stream(reading, writing, source, destination, (cursor, last), form)
                if copied != expected:  # the source changed under the copy: roll the batch back
                    raise EtlError(
                        f"batch {state.batches}: {copied} rows read where {expected} were counted "
                        "(the source changed during the copy)"
                    )
            self.counted(copied)
            self.save(state)
            self.progress(state, resumed_rows, started)
            if end is None:
                return state
            cursor = last

    def progress(self, state: CopyState, resumed_rows: int, started: float) -> None:
        """Report rows copied so far and this attempt's rate, at most every PROGRESS_EVERY seconds."""
        now = time.monotonic()
        if now - self.reported < PROGRESS_EVERY:
            return
        self.reported = now
        rate = (state.rows - resumed_rows) / (now - started) if now > started else 0.0
        self.report({"rows": state.rows, "rows_per_second": round(rate, 1)})

    def transformed(
        self, columns: list[str], rows: list[tuple[Any, ...]], destination: Table
    ) -> list[tuple[Any, ...]] | list[dict[str, Any]]:
        if self.transform is None:
            return rows
        out = list(self.transform(self.ctx, [dict(zip(columns, row, strict=True)) for row in rows]))
        if not all(isinstance(row, dict) for row in out):
            raise EtlError(f"transform {self.spec.transform!r} must give dicts (one per row)")
        _check_columns(sorted({name for row in out for name in row}), destination)
        return out

    def save(self, state: CopyState) -> None:
        self.ctx.progress.save(
            {"upper": state.upper, "cursor": state.cursor, "rows": state.rows, "batches": state.batches}
        )


def write_rows(
    connection: Connection,
    table: Table,
    columns: list[str],
    rows: list[tuple[Any, ...]] | list[dict[str, Any]],
) -> None:
    """Insert a batch in the connection's transaction: PostgreSQL (psycopg) rows given as tuples
    go through ``COPY ... FROM STDIN``, the rest through an executemany ``INSERT``."""
    if not rows:
        return
    copying = connection.dialect.name == "postgresql" and connection.dialect.driver == "psycopg"
    if copying and isinstance(rows[0], dict):  # a transform's rows: COPY too when they agree on columns
        first = rows[0]
        if all(isinstance(row, dict) and row.keys() == first.keys() for row in rows):
            columns = list(first)
            rows = [tuple(row[name] for name in columns) for row in rows]
    if isinstance(rows[0], tuple):
        if copying:
            _copy_in(connection, table, columns, rows)
            return
        rows = [dict(zip(columns, row, strict=True)) for row in rows]
    connection.execute(insert(table), rows)


def _copy_in(connection: Connection, table: Table, columns: list[str], rows: list[tuple[Any, ...]]) -> None:
    quote = connection.dialect.identifier_preparer
    names = ", ".join(quote.quote(name) for name in columns)
    statement = f"COPY {quote.format_table(table)} ({names}) FROM STDIN"
    driver = connection.connection.driver_connection  # psycopg's, in the batch's transaction
    assert driver is not None
    with driver.cursor() as cursor, cursor.copy(statement) as copy:
        for row in rows:
            copy.write_row(row)


def _check_columns(columns: Iterable[str], destination: Table) -> None:
    extra = [name for name in columns if name not in destination.c]
    if extra:
        raise EtlError(
            f"columns that do not match: {', '.join(map(repr, extra))} not in destination "
            f"{destination.fullname!r} (it has {', '.join(destination.c.keys())})"
        )


def run_copy(
    spec: CopySpec,
    ctx: TaskContext,
    connections: Connections,
    transform: Transform | None = None,
    counted: Callable[[int], None] = lambda rows: None,
    report: Callable[[dict[str, Any]], None] = lambda detail: None,
) -> dict[str, Any]:
    """Copy ``spec``'s source into its destination for ``ctx``'s run, resuming where it stopped.

    Returns ``{rows, rows_this_attempt, batches, seconds, rows_per_second}``; raises
    :class:`EtlError` for what the databases refuse and
    :class:`~workers.errors.AttemptFenced` when a newer attempt owns the copy.
    """
    return _Copy(spec, ctx, connections, transform, counted, report).run()
