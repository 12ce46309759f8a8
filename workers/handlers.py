"""Running one event handler job: the handlers of one section, for one event, one after the other.

A job holds a worker thread's place like any unit. Each handler is looked up in
the checkpoint first: one with a record (it succeeded, was skipped, or failed
without failing the package) is not run again, so a job resumed after a node
loss runs only the handlers that had not ended. Between handlers of one job,
``depends_on`` (on earlier handlers of the section) and ``when`` decide as for
tasks (:func:`orchestrator.packages.flow.decide`); a handler's condition also
sees ``event``.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Protocol

from checkpoints import Checkpoint, TaskRecord
from orchestrator.observability.masking import Masker
from orchestrator.packages.conditions import ConditionError, evaluate
from orchestrator.packages.flow import Decision, Outcome, decide
from orchestrator.packages.model import Task
from workers.errors import RunInterrupted
from workers.execution import SerialHooks
from workers.plan import HandlerJob, Unit
from workers.units import UnitRunner, describe

log = logging.getLogger(__name__)


class HandlerHost(Protocol):
    """What a handler job needs from its run (the executor's ``_Run``)."""

    lock: threading.Condition
    state: Checkpoint
    variables: dict[str, Any]
    hooks: SerialHooks
    masker: Masker

    def outputs(self) -> dict[str, Any]: ...

    def interrupt(self, exc: BaseException) -> None: ...

    def handler_ended(self, key: str, task: Task, record: TaskRecord, seconds: float) -> None: ...

    def handler_failed(self, key: str, task: Task, error: str, seconds: float) -> None: ...

    def job_ended(self, job: HandlerJob) -> None: ...


class HandlerRunner:
    """Runs handler jobs of one attempt (one call of :meth:`run` per worker thread)."""

    def __init__(self, host: HandlerHost, units: UnitRunner) -> None:
        self.host = host
        self.units = units

    def run(self, job: HandlerJob) -> None:
        try:
            outcomes: dict[str, Outcome] = {}
            for handler in job.handlers:
                outcomes[handler.id] = self._one(job, handler, outcomes)
        except (RunInterrupted, KeyboardInterrupt) as exc:
            self.host.interrupt(exc)
        except BaseException as exc:  # a crash: stop everything, execute() re-raises it
            self.host.interrupt(exc)
        finally:
            self.host.job_ended(job)

    def _one(self, job: HandlerJob, handler: Task, outcomes: dict[str, Outcome]) -> Outcome:
        key = f"{job.key}:{handler.id}"
        with self.host.lock:
            record = self.host.state.handlers.get(key)
        if record is not None:
            return Outcome(record.state)
        if decide(handler.constraints, handler.depends_on_mode, outcomes) is Decision.SKIP:
            return self._skip(key, handler)
        if handler.when is not None:
            try:
                with self.host.lock:
                    variables, outputs = dict(self.host.variables), self.host.outputs()
                if not evaluate(handler.when, variables, outputs, job.event):
                    return self._skip(key, handler)
            except ConditionError as exc:
                self.host.handler_failed(key, handler, self.host.masker(str(exc)), 0.0)
                return Outcome.FAILED
        unit = Unit(handler, handler=key, event=job.event)
        try:
            output, _, seconds = self.units.tries(unit)
        except (RunInterrupted, KeyboardInterrupt):
            raise
        except Exception as exc:
            self.host.handler_failed(key, handler, self.host.masker(describe(exc)), 0.0)
            return Outcome.FAILED
        self.host.handler_ended(key, handler, TaskRecord(state="succeeded", output=output), seconds)
        return Outcome.SUCCEEDED

    def _skip(self, key: str, handler: Task) -> Outcome:
        log.info("handler %s skipped", key)
        self.host.handler_ended(key, handler, TaskRecord(state="skipped"), 0.0)
        return Outcome.SKIPPED
