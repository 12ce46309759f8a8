"""Task logs in SQL: the lines tasks logged, written from ``log`` records, bounded per task, read in order.

A worker appends every line a task logs (``ctx.log``, a shell task's output),
already masked, to the attempt's fenced event stream as a ``log`` record
(:class:`~orchestrator.state.records.Record`), before the call returns; the
schedulers' projection (and the attempt's outcome transaction) write them here
with the other records (:func:`~orchestrator.state.projection.write_records`).

Each task of a run keeps at most :data:`MAX_LINES` lines, across its attempts and
items: when a batch goes past it, the oldest lines (in attempt, then record
order) are deleted and counted in ``task_log_trims``; readers show that count as
a note before the task's lines. Retention deletes both with the run.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.state.models import TaskLog, TaskLogTrim
from orchestrator.state.records import Record
from orchestrator.state.types import among

LOG = "log"
"""The record type of a log line."""
MAX_LINES = 10_000
"""Lines kept per task of a run (across attempts and items); older ones are dropped."""
MAX_LINE_CHARS = 8_192
"""A longer line is cut (the worker says by how much)."""
_DELETE_CHUNK = 500


def log_detail(task_id: str, item: Any, try_number: int, level: str, message: str) -> dict[str, Any]:
    """The ``detail`` of a log record (the worker's side of the format)."""
    if len(message) > MAX_LINE_CHARS:
        message = f"{message[:MAX_LINE_CHARS]}... ({len(message) - MAX_LINE_CHARS} more characters cut)"
    detail: dict[str, Any] = {"task": task_id, "try": try_number, "level": level, "message": message}
    if item is not None:
        detail["item"] = item
    return detail


def log_row(record: Record) -> dict[str, Any]:
    """The ``task_logs`` row of a log record."""
    detail = record.detail
    item = detail.get("item")
    return {
        "run_id": record.run_id,
        "task_id": str(detail.get("task", "")),
        "item": None if item is None else json.dumps(item),
        "attempt": record.attempt,
        "try_number": int(detail.get("try", 1)),
        "seq": record.seq,
        "at": record.when,
        "level": str(detail.get("level", "info"))[:16],
        "message": str(detail.get("message", "")),
        "source": record.source,
    }


def written_sources(session: Session, run_ids: list[str], records: Iterable[Record]) -> set[tuple[str, str]]:
    """The (run, source) of those log ``records`` already in SQL."""
    sources = sorted({record.source for record in records if record.type == LOG})
    if not sources:
        return set()
    query = select(TaskLog.run_id, TaskLog.source).where(
        among(session, TaskLog.run_id, run_ids), among(session, TaskLog.source, sources)
    )
    return {(run_id, source) for run_id, source in session.execute(query).all()}


def not_dropped(session: Session, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Those of the ``task_logs`` rows not older than their task's newest dropped line.

    A line dropped by the bound and then written again (a batch replayed, the attempt's
    outcome transaction) stays dropped: it was counted once.
    """
    run_ids = sorted({row["run_id"] for row in rows})
    query = select(TaskLogTrim.run_id, TaskLogTrim.task_id, TaskLogTrim.attempt, TaskLogTrim.seq).where(
        TaskLogTrim.run_id.in_(run_ids)
    )
    marks = {(run_id, task): (attempt, seq) for run_id, task, attempt, seq in session.execute(query)}
    if not marks:
        return rows
    return [
        row
        for row in rows
        if (row["attempt"], row["seq"]) > marks.get((row["run_id"], row["task_id"]), (0, 0))
    ]


def trim(session: Session, keys: Iterable[tuple[str, str]], limit: int = MAX_LINES) -> int:
    """Drop the oldest lines of each (run, task) in ``keys`` beyond ``limit``; return how many went.

    The caller holds the runs' locks (:func:`~orchestrator.state.projection.write_records`).
    """
    dropped = 0
    for run_id, task_id in sorted(set(keys)):
        of_task = (TaskLog.run_id == run_id, TaskLog.task_id == task_id)
        excess = int(session.scalar(select(func.count()).select_from(TaskLog).where(*of_task)) or 0) - limit
        if excess <= 0:
            continue
        found = session.execute(
            select(TaskLog.id, TaskLog.attempt, TaskLog.seq)
            .where(*of_task)
            .order_by(TaskLog.attempt, TaskLog.seq)
            .limit(excess)
        ).all()
        oldest = [line_id for line_id, _, _ in found]
        for start in range(0, len(oldest), _DELETE_CHUNK):
            chunk = oldest[start : start + _DELETE_CHUNK]
            session.execute(
                delete(TaskLog).where(TaskLog.id.in_(chunk)).execution_options(synchronize_session=False)
            )
        _, attempt, seq = found[-1]
        row = session.get(TaskLogTrim, (run_id, task_id))
        if row is None:
            session.add(
                TaskLogTrim(run_id=run_id, task_id=task_id, dropped=len(oldest), attempt=attempt, seq=seq)
            )
        else:
            row.dropped += len(oldest)
            row.attempt, row.seq = max((row.attempt, row.seq), (attempt, seq))
        dropped += len(oldest)
    return dropped


@dataclass(frozen=True)
class LogLine:
    """A line as readers show it; ``level`` ``note`` (and no id) says how many lines were dropped."""

    id: int | None
    at: str | None
    task: str
    item: Any
    attempt: int | None
    try_number: int | None
    level: str
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": self.at,
            "task": self.task,
            "item": self.item,
            "attempt": self.attempt,
            "try": self.try_number,
            "level": self.level,
            "message": self.message,
        }


class TaskLogs:
    """Reads a run's task logs (the CLI's ``orchestrator logs``, the web UI)."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def lines(
        self,
        run_id: str,
        *,
        task: str | None = None,
        attempt: int | None = None,
        after: int | None = None,
        limit: int | None = None,
    ) -> list[LogLine]:
        """The run's lines in order (attempt, then as logged), the drop notes first.

        ``after``: only lines stored after that line id (new ones, for ``--follow``),
        in the order they were stored, without notes. ``limit``: the newest ``limit`` lines only.
        """
        query = select(TaskLog).where(TaskLog.run_id == run_id)
        if after is not None:
            query = query.where(TaskLog.id > after)
        if task is not None:
            query = query.where(TaskLog.task_id == task)
        if attempt is not None:
            query = query.where(TaskLog.attempt == attempt)
        order: Sequence[Any] = (TaskLog.id,) if after is not None else (TaskLog.attempt, TaskLog.seq)
        with self.sessions() as session:
            if limit is None:
                rows = list(session.scalars(query.order_by(*order)))
            else:
                newest = [column.desc() for column in order]
                rows = list(session.scalars(query.order_by(*newest).limit(limit)))[::-1]
            found = [_line(row) for row in rows]
            if after is None:
                found = self._notes(session, run_id, task) + found
        return found

    def last_id(self, run_id: str) -> int:
        """The id of the run's newest stored line (0: none)."""
        with self.sessions() as session:
            found = session.scalar(select(func.max(TaskLog.id)).where(TaskLog.run_id == run_id))
        return int(found or 0)

    @staticmethod
    def _notes(session: Session, run_id: str, task: str | None) -> list[LogLine]:
        query = select(TaskLogTrim).where(TaskLogTrim.run_id == run_id, TaskLogTrim.dropped > 0)
        if task is not None:
            query = query.where(TaskLogTrim.task_id == task)
        notes = []
        for row in session.scalars(query.order_by(TaskLogTrim.task_id)):
            text = (
                f"{row.dropped:,} earlier line{'' if row.dropped == 1 else 's'} of task {row.task_id} "
                f"dropped (at most {MAX_LINES:,} lines are kept per task)"
            )
            notes.append(LogLine(None, None, row.task_id, None, None, None, "note", text))
        return notes


def _line(row: TaskLog) -> LogLine:
    return LogLine(
        id=row.id,
        at=row.at.isoformat(),
        task=row.task_id,
        item=None if row.item is None else json.loads(row.item),
        attempt=row.attempt,
        try_number=row.try_number,
        level=row.level,
        message=row.message,
    )
