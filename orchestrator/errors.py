"""Exceptions of the orchestrator: one root, specific subclasses.

Exit codes of the CLI follow the family: :class:`InvalidInput` is 2 (bad
input, nothing ran), a failed run is 1.
"""

from __future__ import annotations

from dataclasses import dataclass


class OrchestratorError(Exception):
    """Root of every orchestrator failure."""


class InvalidInput(OrchestratorError):
    """Input refused before anything ran (exit code 2)."""


@dataclass(frozen=True)
class Issue:
    """One validation problem: where it is and what is wrong."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class PackageInvalid(InvalidInput):
    """A package definition with one or more problems, all of them listed."""

    def __init__(self, issues: list[Issue], *, source: str = "package") -> None:
        self.issues = issues
        self.source = source
        count = f"{len(issues)} error" + ("" if len(issues) == 1 else "s")
        lines = "\n".join(f"  - {issue}" for issue in issues)
        super().__init__(f"{source}: {count}\n{lines}")


class VariableInvalid(InvalidInput):
    """A variable value that does not fit its declaration (or a missing required one)."""


class SubmissionRefused(InvalidInput):
    """A submission the scheduler will not accept (bad signature, forbidden task kind...)."""


class PackageNotDeployed(InvalidInput):
    """No deployed version of the package (or not the version asked for) is in the catalog."""


class ScheduleInvalid(InvalidInput):
    """A schedule that cannot be recorded: unknown name, bad cron expression, time zone or interval."""


class RunNotFound(OrchestratorError):
    """No run with that id is recorded."""


class RunStateConflict(InvalidInput):
    """The run is not in a state that allows the request (resume a succeeded run, say)."""


class ClusterUnavailable(OrchestratorError):
    """The broker or the database cannot be reached."""


class NoBrokerServer(ClusterUnavailable):
    """No broker URL is set and no server binary can be found to start an embedded one.

    The CLI exits 2 (nothing ran) with the message, which names every way out.
    """


class ExecutionError(OrchestratorError):
    """Root of the failures raised while a package runs (the rest are in :mod:`workers.errors`)."""


class RunInterrupted(ExecutionError):
    """The run must stop now, whatever the current task is doing.

    Raised through task code; the executor re-raises it even if a task
    swallowed it, so catching ``Exception`` in a task cannot keep a stopped
    attempt going.
    """


class AttemptFenced(RunInterrupted):
    """This attempt was superseded by a newer one (lease lost or epoch moved on).

    A fenced attempt stops at once, writes nothing more and reports nothing:
    the newer attempt owns the run. Raised by the workers and by the state
    layer, whose every write on behalf of an attempt checks its epoch.
    """
