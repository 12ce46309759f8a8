"""Reads of the web UI: pages of the run list, and what changed since a page was shown.

The run list is newest first, filtered and paginated in SQL by keyset.

A page is found by seeking in the ``(submitted_at, id)`` order from a cursor (the
first or last run of the neighbouring page) rather than by ``OFFSET``, so the
hundredth page costs what the first does. The composite indexes of the ``runs``
table (migration ``0002_run_list``) serve every filter: none, the state, the package,
a time range, and any combination (the time range narrows within each index).

What changed is found by polling cheap indexed reads: events after a known id
(the primary key), and a digest of one run's state and task states.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, func, or_, select
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.errors import InvalidInput
from orchestrator.state.models import Event, Run, TaskLog, TaskRun
from orchestrator.state.states import RunState

MAX_PAGE = 500
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_CURSOR = re.compile(r"^(\d{1,20})\.([A-Za-z0-9_.:-]{1,128})$")


@dataclass(frozen=True)
class RunFilter:
    """Which runs to list; ``None`` means any. ``since`` is inclusive, ``until`` exclusive."""

    state: RunState | None = None
    package: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def clauses(self) -> list[ColumnElement[bool]]:
        found: list[ColumnElement[bool]] = []
        if self.state is not None:
            found.append(Run.state == self.state)
        if self.package:
            found.append(Run.package == self.package)
        if self.since is not None:
            found.append(Run.submitted_at >= self.since)
        if self.until is not None:
            found.append(Run.submitted_at < self.until)
        return found


@dataclass(frozen=True)
class Cursor:
    """A position in the list: a run's submission time and id. Its text form is URL-safe."""

    submitted_at: datetime
    run_id: str

    def __str__(self) -> str:
        micros = (self.submitted_at - _EPOCH) // timedelta(microseconds=1)
        return f"{micros}.{self.run_id}"

    @classmethod
    def parse(cls, text: str) -> Cursor:
        """The cursor written by ``str()``; :class:`~orchestrator.errors.InvalidInput` otherwise."""
        match = _CURSOR.fullmatch(text)
        if match is None:
            raise InvalidInput(f"not a cursor of the run list: {text[:80]!r}")
        return cls(_EPOCH + timedelta(microseconds=int(match[1])), match[2])

    @classmethod
    def of(cls, run: Run) -> Cursor:
        return cls(run.submitted_at, run.id)


@dataclass(frozen=True)
class RunPage:
    """Runs newest first; ``older`` / ``newer`` are the cursors of the neighbouring pages, if any."""

    runs: Sequence[Run]
    older: Cursor | None
    newer: Cursor | None


def _seek(cursor: Cursor, *, older: bool) -> ColumnElement[bool]:
    # The bare bound on submitted_at lets the index seek straight to the cursor; the OR alone
    # would be read row by row from the top of the list.
    at, run_id = cursor.submitted_at, cursor.run_id
    if older:
        return and_(Run.submitted_at <= at, or_(Run.submitted_at < at, Run.id < run_id))
    return and_(Run.submitted_at >= at, or_(Run.submitted_at > at, Run.id > run_id))


class RunListing:
    """Reads of the run list; each call is one short read transaction."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def page(
        self,
        where: RunFilter,
        *,
        limit: int = 50,
        before: Cursor | None = None,
        after: Cursor | None = None,
    ) -> RunPage:
        """The ``limit`` runs just older than ``before``, or just newer than ``after``, or the newest."""
        limit = max(1, min(limit, MAX_PAGE))
        query: Select[Any] = select(Run).where(*where.clauses())
        if after is not None:
            query = query.where(_seek(after, older=False))
            query = query.order_by(Run.submitted_at.asc(), Run.id.asc())
        else:
            if before is not None:
                query = query.where(_seek(before, older=True))
            query = query.order_by(Run.submitted_at.desc(), Run.id.desc())
        with self.sessions() as session:
            rows = list(session.execute(query.limit(limit + 1)).scalars())
            session.expunge_all()
        more = len(rows) > limit
        rows = rows[:limit]
        if after is not None:
            rows.reverse()
            return RunPage(rows, Cursor.of(rows[-1]) if rows else after, Cursor.of(rows[0]) if more else None)
        older = Cursor.of(rows[-1]) if more and rows else None
        newer = Cursor.of(rows[0]) if before is not None and rows else None
        return RunPage(rows, older, newer)

    def count(self, where: RunFilter) -> int:
        """How many runs match ``where``."""
        with self.sessions() as session:
            return int(
                session.execute(select(func.count()).select_from(Run).where(*where.clauses())).scalar_one()
            )

    def packages(self, limit: int = 200) -> list[str]:
        """Names of packages that have runs, alphabetically (read from the package index)."""
        with self.sessions() as session:
            query = select(Run.package).distinct().order_by(Run.package).limit(limit)
            return list(session.execute(query).scalars())

    def last_event_id(self) -> int:
        """The id of the newest event of any run (0 without any)."""
        with self.sessions() as session:
            return int(session.execute(select(func.max(Event.id))).scalar_one_or_none() or 0)

    def events_after(self, after: int, run_id: str | None = None, limit: int = 200) -> list[Event]:
        """Events with an id above ``after`` (of one run, or of all), oldest first."""
        query = select(Event).where(Event.id > after).order_by(Event.id).limit(limit)
        if run_id is not None:
            query = query.where(Event.run_id == run_id)
        with self.sessions() as session:
            rows = list(session.execute(query).scalars())
            session.expunge_all()
            return rows

    def run_digest(self, run_id: str) -> tuple[Any, ...]:
        """What a run's page shows that may change without an event (a task starting, say)."""
        with self.sessions() as session:
            run = session.execute(
                select(Run.state, Run.attempt, Run.node, Run.updated_at).where(Run.id == run_id)
            ).one_or_none()
            tasks = session.execute(
                select(TaskRun.task_id, TaskRun.state, TaskRun.tries).where(TaskRun.run_id == run_id)
            ).all()
            # A new task log line changes the page too (an indexed max: cheap).
            last_line = session.scalar(select(func.max(TaskLog.id)).where(TaskLog.run_id == run_id))
        return (tuple(run) if run else None, tuple(sorted(tuple(t) for t in tasks)), last_line)
