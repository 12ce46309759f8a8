"""Lifecycle states and schedule policies shared by the SQL models, the CLI and the Python API."""

from __future__ import annotations

from enum import StrEnum


class RunState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    RECOVERING = "recovering"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED)


class TaskState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    UPSTREAM_FAILED = "upstream_failed"  # blocked by a failure a resumed run may undo
    SKIPPED = "skipped"  # will not run in this run: constraints not met, or its condition false
    CANCELLED = "cancelled"


class CatchUp(StrEnum):
    """What a schedule does with the slots it missed (no scheduler evaluated them in time)."""

    NONE = "none"  # missed slots never run
    LATEST = "latest"  # the most recent missed slot runs, once
    ALL = "all"  # every missed slot runs, oldest first


class Overlap(StrEnum):
    """What a schedule does with a slot while its previous run is still active."""

    SKIP = "skip"  # the slot does not run
    QUEUE = "queue"  # the slot waits for the previous run to end (one slot waits at most)
    ALLOW = "allow"  # the slot runs alongside
