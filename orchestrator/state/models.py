"""The SQL state of the orchestrator: runs, their attempts, tasks, events, task logs and nodes; the
package catalog, the schedules and the claims of the schedulers' daily maintenance.

The database is the source of truth for run state and history (checkpoints
hold progress, Redis only liveness). Every timestamp is a timezone-aware UTC
``datetime``; lifecycle states are the ``StrEnum``\\ s of
:mod:`orchestrator.state.states` (plus the two below), stored as plain strings.

The schema is created by the Alembic migrations in
:mod:`orchestrator.state.migrations`, never by ``metadata.create_all``; a test
checks that the migrated schema equals this metadata.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    Boolean,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from orchestrator.state.states import CatchUp, Overlap, RunState, TaskState
from orchestrator.state.types import EnumString, UtcDateTime, utcnow

# Stable constraint names, so migrations can name what they alter or drop.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class AttemptState(StrEnum):
    """Lifecycle of one attempt (one dispatch of a run to a worker)."""

    DISPATCHED = "dispatched"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    LOST = "lost"
    FENCED = "fenced"


class NodeState(StrEnum):
    """Liveness of a worker node as last recorded by the scheduler."""

    ALIVE = "alive"
    LOST = "lost"
    STOPPED = "stopped"


class Base(DeclarativeBase):
    """Declarative base of every table; ``Base.metadata`` is the migrations' target."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UtcDateTime(),
        dict[str, Any]: JSON(),
    }


class Package(Base):
    """A registered package definition; any node can load a run's definition from here."""

    __tablename__ = "packages"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    definition_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    definition: Mapped[dict[str, Any]]
    registered_at: Mapped[datetime] = mapped_column(default=utcnow)


class Run(Base):
    """One submitted run of a package.

    ``attempt`` is the number of the current attempt (0 before the first
    dispatch); ``epoch`` is the fencing token, strictly increasing per run.
    ``restarts`` counts node-loss resubmissions, bounded by ``max_restarts``.
    """

    __tablename__ = "runs"
    # The run list seeks in (submitted_at, id) order, within a state or a package too
    # (orchestrator.state.listing); migration 0002_run_list creates these.
    __table_args__ = (
        Index(None, "submitted_at", "id"),
        Index(None, "state", "submitted_at", "id"),
        Index(None, "package", "submitted_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    package: Mapped[str] = mapped_column(String(64))
    definition_hash: Mapped[str] = mapped_column(String(64))
    state: Mapped[RunState] = mapped_column(EnumString(RunState), index=True, default=RunState.QUEUED)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    epoch: Mapped[int] = mapped_column(Integer, default=0)
    restarts: Mapped[int] = mapped_column(Integer, default=0)
    max_restarts: Mapped[int] = mapped_column(Integer)
    node: Mapped[str | None] = mapped_column(String(128))
    variables: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), unique=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    submitted_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None] = mapped_column(index=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    # The catalog version the run was submitted as (None: an inline package).
    package_version: Mapped[int | None] = mapped_column(Integer)

    attempts: Mapped[list[Attempt]] = relationship(
        back_populates="run", order_by="Attempt.number", passive_deletes=True
    )
    tasks: Mapped[list[TaskRun]] = relationship(back_populates="run", passive_deletes=True)
    events: Mapped[list[Event]] = relationship(
        back_populates="run", order_by="Event.id", passive_deletes=True
    )


class Attempt(Base):
    """One dispatch of a run: attempt ``number`` under fencing ``epoch``."""

    __tablename__ = "attempts"
    __table_args__ = (UniqueConstraint("run_id", "number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    epoch: Mapped[int] = mapped_column(Integer)
    node: Mapped[str | None] = mapped_column(String(128))
    state: Mapped[AttemptState] = mapped_column(EnumString(AttemptState), default=AttemptState.DISPATCHED)
    dispatched_at: Mapped[datetime] = mapped_column(default=utcnow)
    claimed_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(Text)

    run: Mapped[Run] = relationship(back_populates="attempts")


class TaskRun(Base):
    """The state of one task of a run, across all its attempts.

    ``attempt`` is the run attempt that last ran the task; ``tries`` counts
    task-level tries (application retries) in that attempt.
    """

    __tablename__ = "task_runs"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    task_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    state: Mapped[TaskState] = mapped_column(EnumString(TaskState), default=TaskState.PENDING)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    tries: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    duration_seconds: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)

    run: Mapped[Run] = relationship(back_populates="tasks")


class Event(Base):
    """One entry of a run's timeline (``orchestrator events RUN_ID``).

    ``source`` identifies an event that a worker sent through the event stream
    (``<epoch>-<sequence>`` of its attempt); unique per run, so an event projected
    twice (two schedulers, a batch replayed after a crash) is stored once.
    Events the control plane writes itself have none.
    """

    __tablename__ = "events"
    __table_args__ = (UniqueConstraint("run_id", "source"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    kind: Mapped[str] = mapped_column(String(32))
    node: Mapped[str | None] = mapped_column(String(128))
    attempt: Mapped[int | None] = mapped_column(Integer)
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)
    source: Mapped[str | None] = mapped_column(String(64))

    run: Mapped[Run] = relationship(back_populates="events")


class TaskLog(Base):
    """One line a task logged (``ctx.log``, a shell task's output), masked, kept with the run.

    ``source`` is the stream record it came from (unique per run: a line projected
    twice is stored once); ``attempt`` and ``seq`` order a run's lines (``seq``
    counts every record of the attempt). ``item`` is the foreach item as JSON text,
    ``try_number`` the task-level try. Lines are bounded per task: the oldest go
    first, counted in :class:`TaskLogTrim` (:mod:`orchestrator.state.tasklogs`).
    """

    __tablename__ = "task_logs"
    __table_args__ = (
        UniqueConstraint("run_id", "source"),
        Index(None, "run_id", "attempt", "seq"),
        Index(None, "run_id", "task_id", "attempt", "seq"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    task_id: Mapped[str] = mapped_column(String(64))
    item: Mapped[str | None] = mapped_column(Text)
    attempt: Mapped[int] = mapped_column(Integer)
    try_number: Mapped[int] = mapped_column(Integer)
    seq: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime]
    level: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(64))


class TaskLogTrim(Base):
    """How many of a task's oldest log lines were dropped to keep it within the bound, and the
    newest dropped one's place (``attempt``, ``seq``): a replayed line at or before it stays out."""

    __tablename__ = "task_log_trims"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    task_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    dropped: Mapped[int] = mapped_column(Integer, default=0)
    attempt: Mapped[int] = mapped_column(Integer)
    seq: Mapped[int] = mapped_column(Integer)


class Projection(Base):
    """How far a stream in Redis has been written to SQL: the id of its last projected entry.

    Advanced in the same transaction as the rows it covers, so a batch is
    projected entirely or not at all, and only by one scheduler at a time
    (the row is locked for the batch).
    """

    __tablename__ = "projections"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    position: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Node(Base):
    """A worker node as registered in SQL; its live heartbeat is in Redis."""

    __tablename__ = "nodes"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    state: Mapped[NodeState] = mapped_column(EnumString(NodeState), default=NodeState.ALIVE)
    concurrency: Mapped[int] = mapped_column(Integer)
    metrics_port: Mapped[int | None] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(default=utcnow)


class PackageVersion(Base):
    """One deployed version of a package (``orchestrator deploy FILE``): the catalog.

    Versions count from 1 per package name; the definition itself is the
    :class:`Package` row of the same name and hash.
    """

    __tablename__ = "package_versions"
    __table_args__ = (
        ForeignKeyConstraint(["name", "definition_hash"], ["packages.name", "packages.definition_hash"]),
    )

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    definition_hash: Mapped[str] = mapped_column(String(64))
    deployed_at: Mapped[datetime] = mapped_column(default=utcnow)


class Schedule(Base):
    """A schedule: a deployed package run at every slot of a cron expression or an interval.

    ``next_slot_at`` is the cursor: the first slot not yet handled (None until a
    scheduler sets it from its clock). ``queued_slot_at`` is the one slot waiting for
    the previous run to end (overlap ``queue``). ``claim_owner``/``claim_until`` is a
    scheduler's short claim on the schedule while it fires its slots.
    """

    __tablename__ = "schedules"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    package: Mapped[str] = mapped_column(String(64))
    version: Mapped[int | None] = mapped_column(Integer)
    cron: Mapped[str | None] = mapped_column(String(128))
    every_seconds: Mapped[int | None] = mapped_column(Integer)
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    variables: Mapped[dict[str, Any]] = mapped_column(default=dict)
    catchup: Mapped[CatchUp] = mapped_column(EnumString(CatchUp), default=CatchUp.LATEST)
    overlap: Mapped[Overlap] = mapped_column(EnumString(Overlap), default=Overlap.SKIP)
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    next_slot_at: Mapped[datetime | None] = mapped_column(index=True)
    queued_slot_at: Mapped[datetime | None]
    last_slot_at: Mapped[datetime | None]
    last_run_id: Mapped[str | None] = mapped_column(String(128))
    claim_owner: Mapped[str | None] = mapped_column(String(64))
    claim_until: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Maintenance(Base):
    """A periodic job of the schedulers (the daily purge), claimed by one of them each time it is due."""

    __tablename__ = "maintenance"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    due_at: Mapped[datetime]
    owner: Mapped[str | None] = mapped_column(String(64))
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    result: Mapped[dict[str, Any]] = mapped_column(default=dict)
