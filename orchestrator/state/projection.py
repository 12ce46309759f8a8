"""Writing records to SQL: the schedulers' batches, and an attempt's outcome transaction.

A batch is one transaction: it locks the projection's row (``projections``),
reads the stream entries after the position stored there, writes them and
moves the position past them. So a batch is written entirely or not at all,
and a batch that was not committed (SQL down, the scheduler killed) is read
again by the next one. Schedulers take turns: one that finds the row locked
skips its batch (``SKIP LOCKED``; SQLite serialises every transaction anyway).

The runs a batch touches are locked first, in id order, before anything is
written: an attempt's outcome transaction (which locks its run, then writes
the records the batches have not reached yet, see
:meth:`~orchestrator.state.repository.Repository.finish_attempt`) and a batch
then never wait for each other in a cycle, and a record already written by
one is skipped by the other (``source`` is unique per run).

A record changes a task's state only while its attempt is the run's current
one and the run has not ended: once the outcome is recorded it is the truth,
and a late record only fills in a task's duration or error.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Insert, Table, bindparam, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.state import tasklogs
from orchestrator.state.models import Event, Projection, Run, TaskLog, TaskRun
from orchestrator.state.records import Record, TaskChange
from orchestrator.state.states import RunState, TaskState
from orchestrator.state.types import among

log = logging.getLogger(__name__)

EVENTS = "events"
"""The projection row of the event stream."""
START = "0-0"

Entry = tuple[str, Record | None]
"""A record read from the stream: its entry's id (records of one entry share it), and the record
(``None``: unreadable, logged and skipped)."""
Reader = Callable[[str], Sequence[Entry]]
"""Reads the stream entries after a position (at most a batch)."""


@dataclass(frozen=True)
class Batch:
    """What one batch did: records read (whole stream entries), records written, the position now."""

    entries: int
    written: int
    position: str
    first: str | None  # the id of the batch's first entry (its age is the projection's lag)


class Projections:
    """The SQL side of the projection (see the module docstring)."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def position(self, name: str = EVENTS) -> str:
        """The id of the last entry written to SQL (``0-0``: none yet)."""
        with self.sessions() as session:
            found = session.scalar(select(Projection.position).where(Projection.name == name))
        return found or START

    def project(self, read: Reader, name: str = EVENTS) -> Batch | None:
        """Write the next batch in one transaction; ``None`` if another scheduler is writing one."""
        with self.sessions.begin() as session:
            row = self._lock(session, name)
            if row is None:
                return None
            entries = read(row.position)
            if not entries:
                return Batch(0, 0, row.position, None)
            records = [record for _, record in entries if record is not None]
            written = write_records(session, records, batch=True)
            row.position = entries[-1][0]
            return Batch(len(entries), written, row.position, entries[0][0])

    @staticmethod
    def _lock(session: Session, name: str) -> Projection | None:
        query = select(Projection).where(Projection.name == name).with_for_update(skip_locked=True)
        row = session.execute(query).scalar_one_or_none()
        if row is not None:
            return row
        if session.scalar(select(Projection.name).where(Projection.name == name)) is not None:
            return None  # locked by another scheduler's batch
        row = Projection(name=name, position=START)
        try:
            with session.begin_nested():
                session.add(row)
        except IntegrityError:
            return None  # another scheduler created it just now
        return row


def write_records(
    session: Session,
    records: Sequence[Record],
    locked: Mapping[str, tuple[int, RunState]] | None = None,
    *,
    log_lines: int = tasklogs.MAX_LINES,
    task_rows: TaskRows | None = None,
    batch: bool = False,
) -> int:
    """Write the records not written yet, in order, with the task states they imply.

    Locks the runs they belong to (in id order) but those ``locked`` already (with
    their attempt and state); records of a run that does not exist are logged and
    skipped. Log lines are then bounded to ``log_lines`` per task
    (:mod:`orchestrator.state.tasklogs`). Returns how many records were new.

    ``task_rows``: the task rows of the ``locked`` runs, read by the caller, who writes them
    after adding changes of its own (an attempt's outcome); the records' task changes are
    made there and not written here. Otherwise the rows are read and written here.

    ``batch``: the records come from the stream after the projection's position (a batch).
    Those of a run's current attempt, the run still going, are then not looked up among the
    written events: a batch moves the position past what it writes in the same transaction,
    and the only other writer, the attempt's outcome, ends the run. (A record appended twice,
    an append retried after a failover, say, is still stored once: the insert skips a
    ``source`` the run has.)
    """
    if not records:
        return 0
    locked = dict(locked or {})
    others = sorted({record.run_id for record in records} - set(locked))
    runs = {**locked, **(_lock_runs(session, others) if others else {})}
    skipping = _INSERT_SKIPPING_WRITTEN.get(session.get_bind().dialect.name)
    looked_up = _to_look_up(records, runs) if batch and skipping is not None else records
    run_ids = list(runs)
    written = written_events(session, run_ids, looked_up)
    written |= tasklogs.written_sources(session, run_ids, records)
    rows = _Rows()
    changes: list[tuple[Record, TaskChange, bool]] = []
    new = 0
    for record in records:
        run = runs.get(record.run_id)
        if run is None:
            log.warning("record %s of unknown run %r skipped", record.source, record.run_id)
            continue
        if (record.run_id, record.source) in written:
            continue
        handler = HANDLERS.get(record.type)
        if handler is None:
            log.error("record %s of run %s is of unknown type %r: skipped", record.source, run, record.type)
            continue
        new += 1
        handler(record, rows)
        if record.attempt == run[0]:
            changes.extend((record, change, run[1].finished) for change in record.tasks)
        if record.kind is not None or record.type == tasklogs.LOG:
            written.add((record.run_id, record.source))
    if rows.events:
        session.execute(skipping if skipping is not None else EVENT_INSERT, rows.events)
    logs = tasklogs.not_dropped(session, rows.logs) if rows.logs else []
    if logs:
        session.execute(insert(TaskLog), logs)
        tasklogs.trim(session, {(row["run_id"], row["task_id"]) for row in logs}, log_lines)
    if changes:
        tasks = (
            task_rows
            if task_rows is not None
            else TaskRows(session, sorted({record.run_id for record, _, _ in changes}))
        )
        _apply_changes(tasks, changes)
        if task_rows is None:
            tasks.write(session)
    return new


@dataclass
class _Rows:
    """The rows a set of records adds, by table (inserted together, in order)."""

    events: list[dict[str, Any]] = field(default_factory=list)
    logs: list[dict[str, Any]] = field(default_factory=list)


def _lock_runs(session: Session, run_ids: list[str]) -> dict[str, tuple[int, RunState]]:
    """The runs' current attempt and state, their rows locked in id order (no deadlock)."""
    query = select(Run.id, Run.attempt, Run.state).where(Run.id.in_(run_ids)).order_by(Run.id)
    return {run_id: (attempt, state) for run_id, attempt, state in session.execute(query.with_for_update())}


def _to_look_up(records: Sequence[Record], runs: Mapping[str, tuple[int, RunState]]) -> list[Record]:
    """A batch's records that may be in SQL already: of a run that ended (the outcome writes the
    records the batches had not reached), or of an earlier attempt."""
    found = []
    for record in records:
        run = runs.get(record.run_id)
        if run is not None and (record.attempt != run[0] or run[1].finished):
            found.append(record)
    return found


_EVENTS = cast(Table, Event.__table__)
EVENT_INSERT = insert(_EVENTS)
"""An event's plain Core INSERT, executed with its values as parameters (the ORM's bulk path costs
a batch more than its rows)."""
_INSERT_SKIPPING_WRITTEN: dict[str, Insert] = {
    "postgresql": postgresql.insert(_EVENTS).on_conflict_do_nothing(index_elements=["run_id", "source"]),
    "sqlite": sqlite.insert(_EVENTS).on_conflict_do_nothing(index_elements=["run_id", "source"]),
}
"""By database, the events' INSERT that skips a ``source`` the run already has; elsewhere a batch
looks every record up first and inserts with :data:`EVENT_INSERT`."""


def written_events(
    session: Session, run_ids: list[str], records: Iterable[Record]
) -> set[tuple[str, str | None]]:
    """The (run, source) of those event ``records`` already in SQL."""
    sources = sorted({record.source for record in records if record.kind is not None})
    if not sources:
        return set()
    query = select(Event.run_id, Event.source).where(
        among(session, Event.run_id, run_ids), among(session, Event.source, sources)
    )
    return {(run_id, source) for run_id, source in session.execute(query).all()}


def _event(record: Record, rows: _Rows) -> None:
    """A timeline entry (and the task states it carries)."""
    if record.kind is None:
        return
    rows.events.append(
        {
            "run_id": record.run_id,
            "at": record.when,
            "kind": record.kind,
            "node": record.node,
            "attempt": record.attempt,
            "detail": record.detail,
            "source": record.source,
        }
    )


def _task(record: Record, rows: _Rows) -> None:
    """Task states only (a task started): nothing for the timeline."""


def _log(record: Record, rows: _Rows) -> None:
    """A line a task logged (:mod:`orchestrator.state.tasklogs`)."""
    rows.logs.append(tasklogs.log_row(record))


HANDLERS: dict[str, Callable[[Record, _Rows], None]] = {"event": _event, "task": _task, tasklogs.LOG: _log}
"""Record types and how each is written."""


_TASK_FIELDS = ("state", "attempt", "tries", "started_at", "finished_at", "duration_seconds", "error")


class TaskRows:
    """The ``task_runs`` rows of some runs: read in one query, changed in memory, written with
    one INSERT and one UPDATE (each an executemany) of the rows that are new or changed."""

    def __init__(self, session: Session, run_ids: Sequence[str]) -> None:
        table = cast(Table, TaskRun.__table__)
        self._rows: dict[tuple[str, str], dict[str, Any]] = {}
        self._read: dict[tuple[str, str], tuple[Any, ...]] = {}
        for found in session.execute(select(table).where(table.c.run_id.in_(run_ids))).mappings():
            key = (found["run_id"], found["task_id"])
            self._rows[key] = dict(found)
            self._read[key] = tuple(found[name] for name in _TASK_FIELDS)

    def get(self, run_id: str, task_id: str) -> dict[str, Any] | None:
        return self._rows.get((run_id, task_id))

    def add(
        self, run_id: str, task_id: str, attempt: int, state: TaskState = TaskState.PENDING
    ) -> dict[str, Any]:
        """A new row (pending, no tries yet), written by :meth:`write`."""
        row: dict[str, Any] = dict.fromkeys(_TASK_FIELDS)
        row.update(run_id=run_id, task_id=task_id, state=state, attempt=attempt, tries=0)
        self._rows[(run_id, task_id)] = row
        return row

    def write(self, session: Session) -> None:
        table = cast(Table, TaskRun.__table__)
        added = [row for key, row in self._rows.items() if key not in self._read]
        changed = [
            {
                "row_run": row["run_id"],
                "row_task": row["task_id"],
                **{f"new_{n}": row[n] for n in _TASK_FIELDS},
            }
            for key, row in self._rows.items()
            if key in self._read and tuple(row[name] for name in _TASK_FIELDS) != self._read[key]
        ]
        if added:
            session.execute(insert(table), added)
        if changed:
            session.execute(
                update(table)
                .where(table.c.run_id == bindparam("row_run"), table.c.task_id == bindparam("row_task"))
                .values({name: bindparam(f"new_{name}") for name in _TASK_FIELDS}),
                changed,
            )
        self._read.update((key, tuple(row[name] for name in _TASK_FIELDS)) for key, row in self._rows.items())


def _apply_changes(rows: TaskRows, changes: list[tuple[Record, TaskChange, bool]]) -> None:
    for record, change, ended in changes:
        row = rows.get(record.run_id, change.task_id)
        if row is None:
            if ended:
                continue  # the outcome listed every task; a task it does not know is not ours to add
            row = rows.add(record.run_id, change.task_id, record.attempt)
        elif change.create_only:
            continue
        _change(row, record, change, ended)


def _change(row: dict[str, Any], record: Record, change: TaskChange, ended: bool) -> None:
    when: datetime = record.when
    if ended:
        # The outcome already set the state; fill in what only the record knows.
        if change.state is not None and row["state"].value == change.state:
            if change.seconds is not None:
                row["duration_seconds"] = change.seconds
            if change.error is not None:
                row["error"] = change.error
            row["finished_at"] = row["finished_at"] or when
        return
    if change.started:
        row.update(started_at=when, finished_at=None, error=None)
    if change.tries is not None:
        row["tries"] = change.tries
    if change.state is not None:
        state = TaskState(change.state)
        row.update(state=state, attempt=record.attempt)
        if state not in (TaskState.RUNNING, TaskState.PENDING):
            row["finished_at"] = when
    if change.seconds is not None:
        row["duration_seconds"] = change.seconds
    if change.error is not None:
        row["error"] = change.error
