"""Run state in SQL: every transition of a run, its attempts, tasks and events.

Writes made on behalf of an attempt (its claim and its outcome) are *fenced*:
they run in a transaction that first locks the run row and checks that the
run's epoch is still the attempt's, raising
:class:`~orchestrator.errors.AttemptFenced` otherwise. A zombie attempt
therefore cannot record a claim or an outcome once a newer attempt owns the
run. What an attempt reports while it runs (tasks, items, checkpoints) does
not come here directly: it goes through the event stream, fenced in Redis,
and is written in batches (:mod:`orchestrator.state.projection`).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Engine, Insert, Table, bindparam, distinct, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.errors import AttemptFenced, RunNotFound, RunStateConflict
from orchestrator.packages.model import Package
from orchestrator.state.engine import session_factory
from orchestrator.state.models import Attempt, AttemptState, Event, Node, NodeState, Run, TaskRun
from orchestrator.state.models import Package as PackageRow
from orchestrator.state.projection import EVENT_INSERT, TaskRows, write_records, written_events
from orchestrator.state.records import Record
from orchestrator.state.states import RunState, TaskState
from orchestrator.state.types import utcnow

DEFINITIONS_CACHED = 256
ACTIVE = (RunState.QUEUED, RunState.RUNNING, RunState.RECOVERING)
_ATTEMPT_OUTCOME = {
    RunState.SUCCEEDED: AttemptState.SUCCEEDED,
    RunState.FAILED: AttemptState.FAILED,
    RunState.CANCELLED: AttemptState.CANCELLED,
}


@dataclass(frozen=True)
class Dispatch:
    """An attempt recorded for sending: the message the scheduler puts on the run queue."""

    run_id: str
    attempt: int
    epoch: int


@dataclass(frozen=True)
class ActiveRun:
    """What the scheduler needs to rebuild a run's liveness after Redis lost its data."""

    run_id: str
    epoch: int
    attempt: int
    node: str | None
    claimed: bool


class Repository:
    """All SQL reads and writes of the orchestrator, one short transaction each."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sessions: sessionmaker[Session] = session_factory(engine)
        # A definition never changes under its hash: registered and loaded ones are remembered,
        # which saves a transaction per submission and per attempt (each holds SQLite's lock).
        # As JSON text: each read decodes its own copy, several times faster than a deep copy.
        self._definitions: dict[tuple[str, str], str] = {}

    # -- helpers -----------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked_run(self, session: Session, run_id: str) -> Iterator[Run]:
        run = session.execute(select(Run).where(Run.id == run_id).with_for_update()).scalar_one_or_none()
        if run is None:
            raise RunNotFound(f"no run {run_id!r}")
        yield run

    @contextlib.contextmanager
    def fenced(self, run_id: str, epoch: int) -> Iterator[tuple[Session, Run]]:
        """A transaction on the run, refused unless its epoch is still ``epoch`` and it has not ended."""
        with self.sessions.begin() as session, self._locked_run(session, run_id) as run:
            _check_epoch(run_id, epoch, run.epoch, run.state)
            yield session, run

    @staticmethod
    def _event(
        session: Session,
        run_id: str,
        kind: str,
        *,
        node: str | None = None,
        attempt: int | None = None,
        **detail: Any,
    ) -> None:
        session.add(Event(run_id=run_id, kind=kind, node=node, attempt=attempt, detail=detail))

    @staticmethod
    def _insert_event(
        session: Session, run_id: str, kind: str, at: datetime, *, node: str, attempt: int, **detail: Any
    ) -> None:
        """:meth:`_event` as one plain INSERT, for the paths every attempt takes (claim, outcome):
        one statement made once, its values given as parameters (no statement built per call)."""
        session.execute(
            EVENT_INSERT,
            {"run_id": run_id, "at": at, "kind": kind, "node": node, "attempt": attempt, "detail": detail},
        )

    # -- submission ----------------------------------------------------------------------

    def register_package(self, package: Package) -> None:
        """Record the definition under its hash (idempotent)."""
        key = (package.name, package.definition_hash)
        if key in self._definitions:
            return
        with self.sessions.begin() as session:
            definition = store_definition(session, package)
        self._remember(key, definition)

    def definition(self, name: str, definition_hash: str) -> dict[str, Any]:
        key = (name, definition_hash)
        if key not in self._definitions:
            with self.sessions() as session:
                row = session.get(PackageRow, key)
                if row is None:
                    raise RunNotFound(f"package {name!r} definition {definition_hash[:12]} is not registered")
                self._remember(key, row.definition)
        return cast(dict[str, Any], json.loads(self._definitions[key]))

    def _remember(self, key: tuple[str, str], definition: dict[str, Any]) -> None:
        if len(self._definitions) >= DEFINITIONS_CACHED:
            self._definitions.clear()
        self._definitions[key] = json.dumps(definition, separators=(",", ":"))

    def create_run(
        self,
        run_id: str,
        package: Package,
        variables: Mapping[str, Any],
        *,
        max_restarts: int,
        idempotency_key: str | None = None,
        version: int | None = None,
        epoch: int | None = None,
    ) -> tuple[str, bool]:
        """Record a submitted run; return ``(run_id, created)``.

        With ``epoch``, its first dispatch (attempt 1 under that epoch) is recorded in
        the same transaction. A retried submission (same run id, or same idempotency
        key) creates nothing and returns the existing run's id. ``version`` is the
        catalog version of a deployed package (None for an inline one).
        """
        shown: dict[str, Any] = {"version": version} if version is not None else {}
        key = (package.name, package.definition_hash)
        definition = None
        try:
            # Plain statements, inserted first: a run id or idempotency key already recorded
            # (a redelivered or retried submission) fails the insert and is looked up below.
            with self.sessions.begin() as session:
                now = utcnow()
                if key not in self._definitions:  # unless this process knows it is registered
                    definition = store_definition(session, package)
                session.execute(
                    insert(_RUNS).values(
                        id=run_id,
                        package=package.name,
                        definition_hash=package.definition_hash,
                        state=RunState.QUEUED,
                        max_restarts=max_restarts,
                        variables=dict(variables),
                        idempotency_key=idempotency_key,
                        package_version=version,
                        attempt=0 if epoch is None else 1,
                        epoch=epoch or 0,
                        submitted_at=now,
                        updated_at=now,
                    )
                )
                rows = [_event_row(run_id, "submitted", now, None, {"package": package.name, **shown})]
                if epoch is not None:
                    session.execute(
                        insert(_ATTEMPTS).values(run_id=run_id, number=1, epoch=epoch, dispatched_at=now)
                    )
                    rows.append(_event_row(run_id, "dispatched", utcnow(), 1, {"epoch": epoch}))
                session.execute(EVENT_INSERT, rows)
        except IntegrityError:
            existing = self._existing(run_id, idempotency_key)
            if existing is None:
                raise
            return existing, False
        if definition is not None:
            self._remember(key, definition)
        return run_id, True

    def _existing(self, run_id: str, idempotency_key: str | None) -> str | None:
        with self.sessions() as session:
            return self._existing_in(session, run_id, idempotency_key)

    @staticmethod
    def _existing_in(session: Session, run_id: str, idempotency_key: str | None) -> str | None:
        """The run with this id, else the one with this idempotency key (one query)."""
        match = (
            Run.id == run_id
            if idempotency_key is None
            else or_(Run.id == run_id, Run.idempotency_key == idempotency_key)
        )
        found = list(session.scalars(select(Run.id).where(match)))
        return run_id if run_id in found else next(iter(found), None)

    def record_refusal(self, run_id: str, package: str, reason: str) -> None:
        """A submission refused at the trust boundary: a failed run with the reason, and an event."""
        with contextlib.suppress(IntegrityError), self.sessions.begin() as session:
            session.add(
                Run(
                    id=run_id,
                    package=package[:64],
                    definition_hash="",
                    state=RunState.FAILED,
                    max_restarts=0,
                    variables={},
                    error=f"submission refused: {reason}",
                    finished_at=utcnow(),
                )
            )
            session.flush()
            self._event(session, run_id, "refused", reason=reason)

    # -- dispatch and recovery (scheduler) -----------------------------------------------------

    def record_dispatch(self, run_id: str, epoch: int, *, reason: str | None = None) -> Dispatch | None:
        """Record a new attempt under ``epoch``; ``None`` if the run has already ended.

        ``reason`` marks a resubmission (node_lost, dispatch_lost, manual).
        """
        with self.sessions.begin() as session, self._locked_run(session, run_id) as run:
            if run.state.finished and reason != "manual":
                return None
            if run.epoch >= epoch:
                return None  # another scheduler already recorded this or a newer epoch
            previous = session.execute(
                select(Attempt).where(Attempt.run_id == run_id, Attempt.number == run.attempt)
            ).scalar_one_or_none()
            if previous is not None and previous.state in (
                AttemptState.DISPATCHED,
                AttemptState.RUNNING,
            ):
                previous.state = AttemptState.FENCED if reason == "manual" else AttemptState.LOST
                previous.ended_at = utcnow()
            run.attempt += 1
            run.epoch = epoch
            if reason is None:
                run.state = RunState.QUEUED
            else:
                run.state = RunState.RECOVERING if reason != "manual" else RunState.QUEUED
                self._event(session, run_id, "resubmitted", attempt=run.attempt, reason=reason, epoch=epoch)
            run.error = None
            run.finished_at = None
            session.add(Attempt(run_id=run_id, number=run.attempt, epoch=epoch))
            self._event(session, run_id, "dispatched", attempt=run.attempt, epoch=epoch)
            return Dispatch(run_id, run.attempt, epoch)

    def record_lost(
        self, run_id: str, old_epoch: int, new_epoch: int, node: str, *, reason: str
    ) -> Run | None:
        """The attempt under ``old_epoch`` was lost and fenced; count the restart.

        Returns the run (with ``restarts`` updated) or ``None`` if it has ended.
        """
        with self.sessions.begin() as session, self._locked_run(session, run_id) as run:
            if run.state.finished:
                return None
            attempt = session.execute(
                select(Attempt).where(Attempt.run_id == run_id, Attempt.epoch == old_epoch)
            ).scalar_one_or_none()
            if attempt is not None and attempt.state in (
                AttemptState.DISPATCHED,
                AttemptState.RUNNING,
            ):
                attempt.state = AttemptState.LOST
                attempt.ended_at = utcnow()
            number = attempt.number if attempt is not None else run.attempt
            if reason == "node_lost":
                self._event(session, run_id, "node_lost", node=node or None, attempt=number)
            self._event(session, run_id, "fenced", node=node or None, attempt=number, epoch=new_epoch)
            if not run.cancel_requested:  # a cancelled run is ended, not restarted
                run.restarts += 1
            run.state = RunState.RECOVERING
            session.flush()
            session.expunge(run)
            return run

    def end_run(self, run_id: str, state: RunState, error: str | None) -> None:
        """End a run from the scheduler (restarts exhausted, cancelled while not running)."""
        with self.sessions.begin() as session, self._locked_run(session, run_id) as run:
            if run.state.finished:
                return
            run.state, run.error, run.finished_at = state, error, utcnow()
            for attempt in run.attempts:
                if attempt.state in (AttemptState.DISPATCHED, AttemptState.RUNNING):
                    attempt.state, attempt.ended_at = AttemptState.LOST, utcnow()
            self._event(session, run_id, "finished", state=state.value, error=error)

    def prepare_resume(self, run_id: str) -> Run:
        """Check that a run may be resumed (failed or cancelled) and clear its cancel flag."""
        with self.sessions.begin() as session, self._locked_run(session, run_id) as run:
            if run.state not in (RunState.FAILED, RunState.CANCELLED):
                raise RunStateConflict(
                    f"run {run_id!r} is {run.state.value}: only failed or cancelled runs can be resumed"
                )
            if not run.definition_hash:
                raise RunStateConflict(f"run {run_id!r} was refused at submission and cannot be resumed")
            run.cancel_requested = False
            run.max_restarts = run.restarts + run.max_restarts
            self._event(session, run_id, "resume_requested")
            session.flush()
            session.expunge(run)
            return run

    def request_cancel(self, run_id: str) -> Run:
        with self.sessions.begin() as session, self._locked_run(session, run_id) as run:
            if not run.state.finished:
                run.cancel_requested = True
                self._event(session, run_id, "cancel_requested")
            session.flush()
            session.expunge(run)
            return run

    def active_runs(self) -> list[ActiveRun]:
        with self.sessions() as session:
            rows = session.execute(
                select(Run.id, Run.epoch, Run.attempt, Run.node, Attempt.state)
                .join(
                    Attempt,
                    (Attempt.run_id == Run.id) & (Attempt.number == Run.attempt),
                    isouter=True,
                )
                .where(Run.state.in_(ACTIVE))
            ).all()
        return [ActiveRun(r[0], r[1], r[2], r[3], r[4] is AttemptState.RUNNING) for r in rows]

    # -- attempts (workers) -----------------------------------------------------------------

    def run_row(self, run_id: str) -> Run:
        with self.sessions() as session:
            run = session.get(Run, run_id)
            if run is None:
                raise RunNotFound(f"no run {run_id!r}")
            session.expunge(run)
            return run

    def mark_claimed(self, run_id: str, epoch: int, attempt: int, node: str) -> Run:
        """Record the claim (fenced); return the run as the attempt needs it (one transaction).

        On every attempt's path, so three plain statements rather than the ORM's unit of work:
        the run's row is updated only while its epoch is ``epoch`` and it has not ended (the
        update locks it), then the attempt's row and the ``claimed`` event; and the package's
        definition, unless this process has it already (:meth:`definition` then reads it from
        memory). A run that is not claimable raises as :meth:`fenced` does.
        """
        now = utcnow()
        with self.sessions.begin() as session:
            claimed = _claim_run(session, run_id, epoch, node, now)
            if claimed is not None:
                _claim_attempt(session, run_id, attempt, node, now)
                self._insert_event(session, run_id, "claimed", now, node=node, attempt=attempt, epoch=epoch)
                key = (claimed.package, claimed.definition_hash)
                if key not in self._definitions:  # definition() then reads it from memory
                    row = session.get(PackageRow, key)
                    if row is not None:
                        self._remember(key, row.definition)
        if claimed is None:  # nothing was changed; say why, as fenced() does
            with self.fenced(run_id, epoch):  # raises: no such run, a newer epoch, or it ended
                pass
            raise AttemptFenced(f"run {run_id!r} could not be claimed at epoch {epoch}")
        return Run(**claimed._asdict())

    def warm(self) -> None:
        """Compile the claim's and the outcome's first statements now, in a transaction that
        changes nothing (no run has the empty id) and is rolled back.

        A worker node does this before Celery forks its pool (``Services.before_fork``):
        the pool processes inherit the compiled statements with the engine instead of compiling
        them on their first attempt, tens of milliseconds of CPU each (the claim returns
        every column of the run), paid all at once when a lost node's runs land on a
        pool that has not run anything yet.
        """
        now = utcnow()
        with self.sessions() as session:
            _claim_run(session, "", 0, "", now)
            _claim_attempt(session, "", 0, "", now)
            session.get(PackageRow, ("", ""))  # the package's definition, on a first attempt
            _lock_outcome(session, "")
            TaskRows(session, [""])
            written_events(session, [""], [Record("event", "", 0, 0, "", 0, 0.0, "warm")])
            _end_run(session, "", RunState.SUCCEEDED, None, now)
            _end_attempt(session, "", 0, RunState.SUCCEEDED, None, now)
            session.rollback()

    def finish_attempt(
        self,
        run_id: str,
        epoch: int,
        attempt: int,
        node: str,
        state: RunState,
        error: str | None,
        tasks: Mapping[str, TaskState],
        records: Sequence[Record] = (),
    ) -> None:
        """Record the attempt's outcome as the run's (fenced).

        ``records`` are what the attempt reported that may not be in SQL yet: they are
        written first, in the same transaction, so the timeline is complete and in order
        once the run has ended (those already written are skipped). On every attempt's
        path, so plain statements: the run's row locked and checked, its task rows read once
        (:class:`~orchestrator.state.projection.TaskRows`: the records' changes and the
        outcome's are made to them in memory, then written in one insert and one executemany
        update), the run's and the attempt's rows updated, and the ``finished`` event.
        """
        with self.sessions.begin() as session:
            current = _lock_outcome(session, run_id)
            if current is None:
                raise RunNotFound(f"no run {run_id!r}")
            _check_epoch(run_id, epoch, current.epoch, current.state)
            task_rows = TaskRows(session, [run_id])
            locked = {run_id: (current.attempt, current.state)}
            write_records(session, records, locked=locked, task_rows=task_rows)
            now = utcnow()
            _end_run(session, run_id, state, error, now)
            _end_attempt(session, run_id, attempt, state, error, now)
            for task_id, task_state in tasks.items():
                row = task_rows.get(run_id, task_id)
                if row is None:
                    task_rows.add(run_id, task_id, attempt, task_state)
                elif (
                    row["state"] in (TaskState.PENDING, TaskState.RUNNING)
                    or task_state is not TaskState.PENDING
                ):
                    row["state"] = task_state
            task_rows.write(session)
            self._insert_event(
                session, run_id, "finished", now, node=node, attempt=attempt, state=state.value, error=error
            )

    # -- nodes -----------------------------------------------------------------------------

    def register_node(
        self, name: str, hostname: str, pid: int, concurrency: int, metrics_port: int | None
    ) -> None:
        with self.sessions.begin() as session:
            node = session.get(Node, name)
            if node is None:
                node = Node(name=name)
                session.add(node)
            node.hostname, node.pid, node.concurrency = hostname, pid, concurrency
            node.metrics_port, node.state = metrics_port, NodeState.ALIVE
            node.started_at = node.last_seen = utcnow()

    def set_node_state(self, name: str, state: NodeState) -> None:
        with self.sessions.begin() as session:
            session.execute(update(Node).where(Node.name == name).values(state=state, last_seen=utcnow()))

    # -- reads -----------------------------------------------------------------------------

    def list_runs(self, state: RunState | None = None, limit: int = 200) -> list[Run]:
        with self.sessions() as session:
            query = select(Run).order_by(Run.submitted_at.desc()).limit(limit)
            if state is not None:
                query = query.where(Run.state == state)
            runs = list(session.execute(query).scalars())
            session.expunge_all()
            return runs

    def task_states(self, run_id: str) -> dict[str, TaskRun]:
        with self.sessions() as session:
            rows = session.execute(select(TaskRun).where(TaskRun.run_id == run_id)).scalars()
            found = {row.task_id: row for row in rows}
            session.expunge_all()
            return found

    def attempts(self, run_id: str) -> list[Attempt]:
        with self.sessions() as session:
            rows = list(
                session.execute(
                    select(Attempt).where(Attempt.run_id == run_id).order_by(Attempt.number)
                ).scalars()
            )
            session.expunge_all()
            return rows

    def events(self, run_id: str) -> list[Event]:
        with self.sessions() as session:
            rows = list(
                session.execute(select(Event).where(Event.run_id == run_id).order_by(Event.id)).scalars()
            )
            session.expunge_all()
            return rows

    def task_progress(self, run_id: str, recent: int = 200) -> dict[str, dict[str, Any]]:
        """The latest ``copy_progress`` event of each task (or foreach item) of a run, by label
        (``task`` or ``task[item]``): a copy's rows and rate. Only the ``recent`` newest are read."""
        with self.sessions() as session:
            details = session.execute(
                select(Event.detail)
                .where(Event.run_id == run_id, Event.kind == "copy_progress")
                .order_by(Event.id.desc())
                .limit(recent)
            ).scalars()
            latest: dict[str, dict[str, Any]] = {}
            for detail in details:
                label = str(detail.get("task")) + (f"[{detail['item']}]" if "item" in detail else "")
                latest.setdefault(label, {k: v for k, v in detail.items() if k not in ("task", "item")})
            return latest

    def items_done(self, run_id: str) -> dict[str, int]:
        """Per foreach task of a run, how many distinct items are recorded done (``item_done``
        events, across attempts: the items an earlier attempt finished are not done again)."""
        task, item = Event.detail["task"].as_string(), Event.detail["item"].as_string()
        with self.sessions() as session:
            rows = session.execute(
                select(task, func.count(distinct(item)))
                .where(Event.run_id == run_id, Event.kind == "item_done")
                .group_by(task)
            ).all()
        return {str(task_id): int(count) for task_id, count in rows if task_id is not None}

    def nodes(self) -> list[Node]:
        with self.sessions() as session:
            rows = list(session.execute(select(Node).order_by(Node.name)).scalars())
            session.expunge_all()
            return rows

    def count_by_state(self) -> dict[RunState, int]:
        with self.sessions() as session:
            rows = session.execute(select(Run.state, func.count()).group_by(Run.state)).all()
        return {state: count for state, count in rows}

    def running_on(self) -> dict[str, list[str]]:
        """Node name to the ids of the runs it is running."""
        with self.sessions() as session:
            rows = session.execute(select(Run.node, Run.id).where(Run.state == RunState.RUNNING)).all()
        found: dict[str, list[str]] = {}
        for node, run_id in rows:
            found.setdefault(node or "", []).append(run_id)
        return found


def _event_row(
    run_id: str, kind: str, at: datetime, attempt: int | None, detail: dict[str, Any]
) -> dict[str, Any]:
    return {"run_id": run_id, "at": at, "kind": kind, "node": None, "attempt": attempt, "detail": detail}


_PACKAGES_TABLE = cast(Table, PackageRow.__table__)
_INSERT_PACKAGE: dict[str, Insert] = {
    "postgresql": postgresql.insert(_PACKAGES_TABLE).on_conflict_do_nothing(),
    "sqlite": sqlite.insert(_PACKAGES_TABLE).on_conflict_do_nothing(),
}
"""By database, a definition's INSERT that skips one already registered; elsewhere it is looked up."""


def store_definition(session: Session, package: Package) -> dict[str, Any]:
    """Register ``package``'s definition (without its defaults) in the caller's transaction,
    unless it is there already (registered before, or by another process at the same moment,
    the row then being the same); return the definition."""
    definition = package.to_dict()
    row = {"name": package.name, "definition_hash": package.definition_hash, "definition": definition}
    skipping = _INSERT_PACKAGE.get(session.get_bind().dialect.name)
    if skipping is not None:
        session.execute(skipping, {**row, "registered_at": utcnow()})
    elif session.get(PackageRow, (package.name, package.definition_hash)) is None:
        session.add(PackageRow(**row))
        session.flush()
    return definition


_RUNS = cast(Table, Run.__table__)
_ATTEMPTS = cast(Table, Attempt.__table__)

# The claim's and the outcome's statements, on every attempt's path: built once, executed with
# their values as parameters (building them per call cost CPU on every attempt, and the most on
# a new pool process's first one, which touches every object they are made of).
_CLAIM_RUN = (
    update(_RUNS)
    .where(
        _RUNS.c.id == bindparam("b_run"),
        _RUNS.c.epoch == bindparam("b_epoch"),
        _RUNS.c.state.not_in([s for s in RunState if s.finished]),
    )
    .values(
        state=RunState.RUNNING,
        node=bindparam("b_node"),
        started_at=func.coalesce(_RUNS.c.started_at, bindparam("b_now", type_=_RUNS.c.started_at.type)),
    )
    .returning(*_RUNS.c)
)
"""The claim of a run: running on a node if it is at the epoch and has not ended; returns it."""
_CLAIM_ATTEMPT = (
    update(_ATTEMPTS)
    .where(_ATTEMPTS.c.run_id == bindparam("b_run"), _ATTEMPTS.c.number == bindparam("b_attempt"))
    .values(state=AttemptState.RUNNING, node=bindparam("b_node"), claimed_at=bindparam("b_now"))
)
_LOCK_OUTCOME = (
    select(_RUNS.c.attempt, _RUNS.c.epoch, _RUNS.c.state)
    .where(_RUNS.c.id == bindparam("b_run"))
    .with_for_update()
)
"""The run's row an outcome checks, locked."""
_END_RUN = (
    update(_RUNS)
    .where(_RUNS.c.id == bindparam("b_run"))
    .values(state=bindparam("b_state"), error=bindparam("b_error"), finished_at=bindparam("b_now"))
)
_END_ATTEMPT = (
    update(_ATTEMPTS)
    .where(_ATTEMPTS.c.run_id == bindparam("b_run"), _ATTEMPTS.c.number == bindparam("b_attempt"))
    .values(state=bindparam("b_state"), ended_at=bindparam("b_now"), error=bindparam("b_error"))
)


def _claim_run(session: Session, run_id: str, epoch: int, node: str, now: datetime) -> Any:
    """The run's row as claimed, or None if it is not at ``epoch`` or has ended."""
    values = {"b_run": run_id, "b_epoch": epoch, "b_node": node, "b_now": now}
    return session.execute(_CLAIM_RUN, values).one_or_none()


def _claim_attempt(session: Session, run_id: str, attempt: int, node: str, now: datetime) -> None:
    session.execute(_CLAIM_ATTEMPT, {"b_run": run_id, "b_attempt": attempt, "b_node": node, "b_now": now})


def _lock_outcome(session: Session, run_id: str) -> Any:
    return session.execute(_LOCK_OUTCOME, {"b_run": run_id}).one_or_none()


def _end_run(session: Session, run_id: str, state: RunState, error: str | None, now: datetime) -> None:
    session.execute(_END_RUN, {"b_run": run_id, "b_state": state, "b_error": error, "b_now": now})


def _end_attempt(
    session: Session, run_id: str, attempt: int, state: RunState, error: str | None, now: datetime
) -> None:
    values = {"b_run": run_id, "b_attempt": attempt, "b_state": _ATTEMPT_OUTCOME[state], "b_error": error}
    session.execute(_END_ATTEMPT, {**values, "b_now": now})


def _check_epoch(run_id: str, epoch: int, current: int, state: RunState) -> None:
    """Refuse an attempt's write unless the run is still at its ``epoch`` and has not ended."""
    if current != epoch:
        raise AttemptFenced(f"run {run_id!r} is at epoch {current}; attempt with epoch {epoch} was fenced")
    if state.finished:
        # Ended by its attempt (a redelivered message must not run it again) or by the
        # scheduler (restarts exhausted, cancelled), which fences in Redis only.
        raise AttemptFenced(f"run {run_id!r} has ended ({state.value}); epoch {epoch} is over")
