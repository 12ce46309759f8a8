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
from itertools import repeat
from operator import itemgetter
from typing import Any

from sqlalchemy import Connection, Table, insert
from sqlalchemy.exc import SQLAlchemyError

from orchestrator.packages.etl import CopySpec
from orchestrator.packages.model import item_key
from workers.context import TaskContext
from workers.errors import TaskCancelled
from workers.etl import pgcopy
from workers.etl.connections import Connections, EtlError
from workers.etl.pgcopy import copy_format, stream
from workers.etl.source import Source, check_columns, check_null_keys, check_unique_key, open_source, reflect
from workers.etl.state import CopyState, advance, claim, ensure_table
from workers.etl.values import decode_key, encode_key

PROGRESS_EVERY = 1.0
"""Seconds between two progress reports of a copy (events: one Redis append each)."""

Batch = list[tuple[list[str], list[tuple[Any, ...]]]]
"""A batch to write: groups of rows (tuples) with the columns they give values for."""

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
            check_columns(source.columns, destination)
        if table is not None:
            check_unique_key(reading, table, spec.key)
        check_null_keys(reading, source, table, spec.key)
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
        last_key = _key_getter([source.columns.index(k) for k in self.spec.source.key])
        fetch = _page_reader(reading, source, upper, size)
        engine = self.connections.engine(self.spec.destination.connection)
        while True:
            if self.ctx.cancelled:
                raise TaskCancelled(f"copy {self.ctx.task_id!r} stopped: its attempt was cancelled")
            rows = fetch(cursor)
            if not rows:
                return state
            last, full = last_key(rows[-1]), len(rows) == size
            out = self.transformed(source.columns, rows, destination)
            count = sum(len(part) for _, part in out)
            del rows  # a transform's input: freed before the write
            with (
                self.database(self.spec.destination.connection, "writing a batch"),
                engine.begin() as writing,
            ):
                # The fence first: a stale attempt learns it at once, before its rows could meet
                # the newer attempt's (a unique key would turn that into a confusing error).
                state = advance(writing, state, count, encode_key(last))
                for columns, part in out:
                    write_rows(writing, destination, columns, part)
            self.counted(count)
            self.save(state)
            self.progress(state, resumed_rows, started)
            if not full:
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

    def transformed(self, columns: list[str], rows: list[tuple[Any, ...]], destination: Table) -> Batch:
        """The batch as the destination gets it: groups of rows with the same columns (one group
        but when a transform gives rows with different columns)."""
        if self.transform is None:
            return [(columns, rows)]
        out = self.transform(self.ctx, list(map(dict, map(zip, repeat(columns), rows))))
        return _as_rows(out if isinstance(out, list) else list(out), destination, self.spec.transform)

    def save(self, state: CopyState) -> None:
        self.ctx.progress.save(
            {"upper": state.upper, "cursor": state.cursor, "rows": state.rows, "batches": state.batches}
        )


def write_rows(connection: Connection, table: Table, columns: list[str], rows: list[tuple[Any, ...]]) -> None:
    """Insert rows (values in the order of ``columns``) in the connection's transaction: through
    ``COPY ... FROM STDIN`` into PostgreSQL (psycopg), else an executemany ``INSERT``."""
    if not rows:
        return
    if pgcopy.psycopg_connection(connection) is not None:
        pgcopy.copy_in(connection, table, columns, rows)
        return
    connection.execute(insert(table), [dict(zip(columns, row, strict=True)) for row in rows])


def _as_rows(out: list[Any], destination: Table, transform: str | None) -> Batch:
    """A transform's rows as tuples, grouped by their columns: one group in the usual case (one
    C-level pass, no dict per row on the way out); a column a row leaves out gets its default."""
    if not all(map(isinstance, out, repeat(dict))):
        raise EtlError(f"transform {transform!r} must give dicts (one per row)")
    if not all(out):
        raise EtlError(f"transform {transform!r} gave a row without columns")
    if not out:
        return []
    names = out[0].keys()
    if not all(map(names.__eq__, map(dict.keys, out))):
        groups: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}
        for row in out:
            groups.setdefault(tuple(row), []).append(tuple(row.values()))
        check_columns(sorted({name for columns in groups for name in columns}), destination)
        return [(list(columns), part) for columns, part in groups.items()]
    columns = list(names)
    check_columns(columns, destination)
    if len(columns) == 1:
        return [(columns, [(row[columns[0]],) for row in out])]
    return [(columns, list(map(itemgetter(*columns), out)))]


def _key_getter(positions: list[int]) -> Callable[[tuple[Any, ...]], tuple[Any, ...]]:
    """A row's key values, as a tuple, from the key columns' positions."""
    return lambda row: tuple(row[i] for i in positions)


def _page_reader(
    reading: Connection, source: Source, upper: tuple[Any, ...], size: int
) -> Callable[[tuple[Any, ...] | None], list[tuple[Any, ...]]]:
    """The next page after a cursor: through psycopg itself from PostgreSQL, else SQLAlchemy."""
    if pgcopy.psycopg_connection(reading) is not None:
        return lambda cursor: pgcopy.fetch(reading, source, cursor, upper, size)
    return lambda cursor: source.fetch(reading, cursor, upper, size)


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
