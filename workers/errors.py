"""Exceptions of package execution.

:class:`ExecutionError`, :class:`RunInterrupted` and :class:`AttemptFenced` are
defined in :mod:`orchestrator.errors` (the state layer raises them too) and
re-exported here.
"""

from __future__ import annotations

from orchestrator.errors import AttemptFenced, ExecutionError, RunInterrupted

__all__ = [
    "AttemptFenced",
    "CheckpointWriteFailed",
    "ExecutionError",
    "RunCancelled",
    "RunInterrupted",
    "StateUnavailable",
    "TaskCancelled",
    "TaskError",
    "TaskTimeout",
    "VariableConflict",
]


class TaskError(ExecutionError):
    """A task could not run or did not succeed (bad template, import error, bad output...)."""


class TaskTimeout(TaskError):
    """A task ran past its ``timeout``."""


class VariableConflict(TaskError):
    """Two units that may run at the same time wrote the same variable (never retried)."""


class TaskCancelled(ExecutionError):
    """The task's attempt was stopped (timeout, cancellation or a lost lease) while it ran."""


class RunCancelled(RunInterrupted):
    """The run was cancelled (Ctrl-C, SIGTERM, ``orchestrator cancel``); the checkpoint is kept."""


class StateUnavailable(RunInterrupted):
    """The run-state database could not record the attempt's progress (it went away, say).

    Not a task failure: the attempt stops and leaves its lease to expire, so the run is
    resubmitted from its checkpoint once the database is back.
    """


class CheckpointWriteFailed(RunInterrupted):
    """A checkpoint could not be written (disk full, read-only, too large): progress not durable."""
