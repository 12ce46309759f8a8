"""Retention in SQL: finished runs found and deleted in small batches, and the daily claim.

A batch is deleted in one short transaction that locks its runs and checks
again that each has ended, and ended before the cutoff: a run resumed (or
otherwise changed) since it was listed is left alone. Active runs (queued,
running, recovering) are never listed.

The daily purge of the schedulers is one row of ``maintenance``: a scheduler
takes it only when it is due, in one compare-and-set, so among all the
schedulers exactly one purges each day.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.state.models import Attempt, Event, Maintenance, Run, TaskLog, TaskLogTrim, TaskRun
from orchestrator.state.states import RunState

FINISHED = (RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED)


@dataclass(frozen=True)
class Candidate:
    """A finished run old enough to go."""

    run_id: str
    package: str
    state: RunState
    definition_hash: str
    finished_at: datetime


@dataclass
class Removed:
    """Rows one batch deleted, and the runs whose checkpoint directories go next."""

    runs: list[tuple[str, str]] = field(default_factory=list)  # (package, run id)
    attempts: int = 0
    tasks: int = 0
    events: int = 0
    logs: int = 0  # task log lines


class RetentionStore:
    """The SQL side of the purge."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def candidates(self, cutoff: datetime, after: Candidate | None, limit: int) -> list[Candidate]:
        """Finished runs that ended before ``cutoff``, oldest first, the next ``limit`` after ``after``."""
        query = select(Run.id, Run.package, Run.state, Run.definition_hash, Run.finished_at).where(
            Run.state.in_(FINISHED), Run.finished_at < cutoff
        )
        if after is not None:  # keyset paging: runs kept (failed with a checkpoint) are passed over
            query = query.where(
                (Run.finished_at > after.finished_at)
                | ((Run.finished_at == after.finished_at) & (Run.id > after.run_id))
            )
        with self.sessions() as session:
            rows = session.execute(query.order_by(Run.finished_at, Run.id).limit(limit)).all()
        # finished_at is set on every finished run (the query's condition).
        return [Candidate(r[0], r[1], r[2], r[3], r[4] or cutoff) for r in rows]

    def count_history(self, run_ids: list[str]) -> Removed:
        """What deleting these runs would delete (``purge --dry-run``)."""
        found = Removed()
        with self.sessions() as session:
            counted = ((Attempt, "attempts"), (TaskRun, "tasks"), (Event, "events"), (TaskLog, "logs"))
            for model, name in counted:
                query = select(func.count()).select_from(model).where(model.run_id.in_(run_ids))
                setattr(found, name, int(session.execute(query).scalar_one()))
        return found

    def delete(self, run_ids: list[str], cutoff: datetime) -> Removed:
        """Delete those of ``run_ids`` still finished before ``cutoff``, with their history."""
        removed = Removed()
        with self.sessions.begin() as session:
            rows = session.execute(
                select(Run.id, Run.package)
                .where(Run.id.in_(run_ids), Run.state.in_(FINISHED), Run.finished_at < cutoff)
                .with_for_update()
            ).all()
            ids = [run_id for run_id, _ in rows]
            if not ids:
                return removed
            removed.logs = _delete(session, delete(TaskLog).where(TaskLog.run_id.in_(ids)))
            _delete(session, delete(TaskLogTrim).where(TaskLogTrim.run_id.in_(ids)))
            removed.events = _delete(session, delete(Event).where(Event.run_id.in_(ids)))
            removed.tasks = _delete(session, delete(TaskRun).where(TaskRun.run_id.in_(ids)))
            removed.attempts = _delete(session, delete(Attempt).where(Attempt.run_id.in_(ids)))
            _delete(session, delete(Run).where(Run.id.in_(ids)))
            removed.runs = [(package, run_id) for run_id, package in rows]
        return removed

    # -- the daily claim -----------------------------------------------------------------------------

    def claim(self, name: str, owner: str, now: datetime, every: timedelta) -> bool:
        """Take the job ``name`` if it is due at ``now``; it is next due ``every`` later."""
        try:
            with self.sessions.begin() as session:
                if session.get(Maintenance, name) is None:
                    session.add(Maintenance(name=name, due_at=now, result={}))
        except IntegrityError:
            pass  # another scheduler created the row at the same moment: the claim below decides
        with self.sessions.begin() as session:
            taken = _delete(
                session,
                update(Maintenance)
                .where(Maintenance.name == name, Maintenance.due_at <= now)
                .values(due_at=now + every, owner=owner, started_at=now, finished_at=None, result={}),
            )
        return taken == 1

    def finish(self, name: str, owner: str, now: datetime, result: dict[str, Any]) -> None:
        with self.sessions.begin() as session:
            session.execute(
                update(Maintenance)
                .where(Maintenance.name == name, Maintenance.owner == owner)
                .values(finished_at=now, result=result)
                .execution_options(synchronize_session=False)
            )

    def job(self, name: str) -> Maintenance | None:
        with self.sessions() as session:
            row = session.get(Maintenance, name)
            if row is not None:
                session.expunge(row)
            return row


def _delete(session: Session, statement: Any) -> int:
    """Execute a DELETE or UPDATE; the number of rows it matched."""
    result = cast(CursorResult[Any], session.execute(statement.execution_options(synchronize_session=False)))
    return int(result.rowcount)
