"""The run-state database: typed models, engines and the migrations applied at start-up."""

from orchestrator.db.engine import make_engine, normalize_url, session_factory
from orchestrator.db.migrate import SchemaMismatch, current_revision, head_revision, upgrade
from orchestrator.db.models import (
    Attempt,
    AttemptState,
    Base,
    Event,
    Node,
    NodeState,
    Package,
    Run,
    TaskRun,
)
from orchestrator.db.types import EnumString, UtcDateTime, utcnow

# Grouped by role, as the house style asks; RUF022 would sort the groups together.
__all__ = [  # noqa: RUF022
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
    "Node",
    "NodeState",
    "Package",
    "Run",
    "TaskRun",
    # column types
    "EnumString",
    "UtcDateTime",
    "utcnow",
]
