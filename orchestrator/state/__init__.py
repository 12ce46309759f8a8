"""Run state: the lifecycle states, and the SQL database that is their source of truth.

Modules: :mod:`~orchestrator.state.states` (run and task states, shared by every side),
:mod:`~orchestrator.state.models` (the tables), :mod:`~orchestrator.state.repository`
(every read and write, fenced by epoch), :mod:`~orchestrator.state.engine`,
:mod:`~orchestrator.state.migrate` and :mod:`~orchestrator.state.migrations` (the schema,
applied at start-up), :mod:`~orchestrator.state.types` (column types),
:mod:`~orchestrator.state.catalog` (deployed package versions), :mod:`~orchestrator.state.schedules`
(schedules and their claims), :mod:`~orchestrator.state.retention` (the purge's batches, the daily claim),
:mod:`~orchestrator.state.tasklogs` (task log lines: written, bounded, read).
"""

from orchestrator.state.engine import make_engine, normalize_url, session_factory
from orchestrator.state.migrate import SchemaMismatch, current_revision, head_revision, upgrade
from orchestrator.state.models import (
    Attempt,
    AttemptState,
    Base,
    Event,
    Maintenance,
    Node,
    NodeState,
    Package,
    PackageVersion,
    Projection,
    Run,
    Schedule,
    TaskLog,
    TaskLogTrim,
    TaskRun,
)
from orchestrator.state.repository import Repository
from orchestrator.state.states import CatchUp, Overlap, RunState, TaskState
from orchestrator.state.types import EnumString, UtcDateTime, utcnow

# Grouped by role, as the house style asks; RUF022 would sort the groups together.
__all__ = [  # noqa: RUF022
    # lifecycle states
    "RunState",
    "TaskState",
    # schedule policies
    "CatchUp",
    "Overlap",
    # reads and writes
    "Repository",
    # engines and sessions
    "make_engine",
    "normalize_url",
    "session_factory",
    # migrations
    "SchemaMismatch",
    "current_revision",
    "head_revision",
    "upgrade",
    # models
    "Attempt",
    "AttemptState",
    "Base",
    "Event",
    "Maintenance",
    "Node",
    "NodeState",
    "Package",
    "PackageVersion",
    "Projection",
    "Run",
    "Schedule",
    "TaskLog",
    "TaskLogTrim",
    "TaskRun",
    # column types
    "EnumString",
    "UtcDateTime",
    "utcnow",
]
