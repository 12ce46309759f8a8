"""Exceptions of package execution."""

from __future__ import annotations

from orchestrator.errors import OrchestratorError


class ExecutionError(OrchestratorError):
    """Root of the failures raised while a package runs."""


class TaskError(ExecutionError):
    """A task could not run or did not succeed (bad template, import error, bad output...)."""


class TaskTimeout(TaskError):
    """A task ran past its ``timeout``."""


class TaskCancelled(ExecutionError):
    """The task's attempt was stopped (timeout, cancellation or a lost lease) while it ran."""


class RunInterrupted(ExecutionError):
    """The run must stop now, whatever the current task is doing.

    Raised through task code; the executor re-raises it even if a task
    swallowed it, so catching ``Exception`` in a task cannot keep a stopped
    attempt going.
    """


class RunCancelled(RunInterrupted):
    """The run was cancelled (Ctrl-C, SIGTERM, ``orchestrator cancel``); the checkpoint is kept."""


class AttemptFenced(RunInterrupted):
    """This attempt was superseded by a newer one (lease lost or epoch moved on).

    A fenced attempt stops at once, writes nothing more and reports nothing:
    the newer attempt owns the run.
    """


class StateUnavailable(RunInterrupted):
    """The run-state database could not record the attempt's progress (it went away, say).

    Not a task failure: the attempt stops and leaves its lease to expire, so the run is
    resubmitted from its checkpoint once the database is back.
    """


class CheckpointWriteFailed(RunInterrupted):
    """A checkpoint could not be written (disk full, read-only, too large): progress not durable."""
