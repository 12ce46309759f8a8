"""Control flow of one attempt: skipped tasks, conditions and event handlers (docs/control-flow.md).

:class:`FlowRun` is mixed into the executor's run (``workers.executor._Run``): it
records what the plan (:mod:`workers.plan`) decided not to run, evaluates the
conditions it asks for, queues event handler jobs (:mod:`workers.handlers`)
and records what became of each handler. Every method is called under the
run's lock unless it says otherwise.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from checkpoints import Change, Checkpoint, TaskRecord
from orchestrator.observability.masking import Masker
from orchestrator.packages.conditions import ConditionError, evaluate
from orchestrator.packages.model import ForeachItem, Package, Task, item_key
from orchestrator.state.states import RunState, TaskState
from workers.commit import Ticket
from workers.errors import TaskError
from workers.execution import RunRequest, SerialHooks
from workers.plan import HandlerJob, Plan

log = logging.getLogger("workers.executor")


class FlowRun:
    """The control-flow part of a run; the attributes and the methods below the line are the run's."""

    request: RunRequest
    package: Package
    plan: Plan
    state: Checkpoint
    states: dict[str, TaskState]
    variables: dict[str, Any]
    failures: list[str]
    hooks: SerialHooks
    masker: Masker
    lock: threading.Condition
    interrupted: BaseException | None
    handler_states: dict[str, TaskState]
    queued: set[str]  # on_error jobs queued by this attempt
    final_stage: int  # on_success, then on_finish: queued once the graph is over

    def _settle(self) -> None:
        """Record what the plan decided not to run; evaluate the conditions it asks for (under the lock)."""
        while True:
            for task_id, final in self.plan.drain_skipped():
                self._skip(self.package.task(task_id), final)
            gated = self.plan.conditions()
            if not gated:
                return
            for task in gated:
                self._gate(task)

    def _gate(self, task: Task) -> None:
        assert task.when is not None
        try:
            run = evaluate(task.when, self.variables, self.outputs())
        except ConditionError as exc:
            self.plan.reject(task.id)
            self.task_failed(task, TaskError(f"when: {exc}"), 0.0)
            return
        self.plan.admit(task.id, run)

    def _on_error(self, task_id: str, item: ForeachItem | None, error: str) -> None:
        """Queue the on_error handlers for a failed task or item, once per run (under the lock)."""
        if not self.package.on_error:
            return
        key = "on_error:" + (task_id if item is None else f"{task_id}[{item_key(item)}]")
        if key in self.queued:
            return
        self.queued.add(key)
        event = self.state.events.get(key)
        if event is None:
            event = {"task": task_id, "item": item, "error": error, "attempt": self.request.attempt}
            self._commit([Change(events={key: event})], [])
        self.plan.add_job(HandlerJob("on_error", key, dict(event), tuple(self.package.on_error)))
        self._wake()

    def _requeue_events(self) -> None:
        """Queue the on_error jobs of recorded events whose handlers did not all end (a resumed run)."""
        for key, event in self.state.events.items():
            if not key.startswith("on_error:"):
                continue
            self.queued.add(key)
            if any(f"{key}:{h.id}" not in self.state.handlers for h in self.package.on_error):
                self.plan.add_job(HandlerJob("on_error", key, dict(event), tuple(self.package.on_error)))

    def _queue_final(self) -> bool:
        """The graph is over: queue on_success (if nothing failed the run), then on_finish."""
        sections = ("on_success", "on_finish")
        while self.interrupted is None and self.final_stage < len(sections):
            section = sections[self.final_stage]
            self.final_stage += 1
            handlers = self.package.handlers(section)
            if not handlers or (section == "on_success" and self.failures):
                continue
            event = {
                "state": (RunState.FAILED if self.failures else RunState.SUCCEEDED).value,
                "error": "; ".join(self.failures) or None,
                "attempt": self.request.attempt,
            }
            self.plan.add_job(HandlerJob(section, section, event, tuple(handlers)))
            return True
        return False

    def handler_ended(self, key: str, task: Task, record: TaskRecord, seconds: float) -> None:
        """A handler succeeded or was skipped: record it; report it once durable."""
        state = TaskState(record.state)
        with self.lock:
            ticket = self._submit([Change(handlers={key: record})])
        self._durable(ticket, [])
        with self.lock:
            self.handler_states[key] = state
            self.hooks.handler_finished(key, task.id, state, seconds, None)

    def handler_failed(self, key: str, task: Task, error: str, seconds: float) -> None:
        """A handler failed (retries spent): the run fails, or the failure is recorded."""
        message = f"handler {key!r} failed: {error}"
        with self.lock:
            self.handler_states[key] = TaskState.FAILED
            self.hooks.handler_finished(key, task.id, TaskState.FAILED, seconds, message)
            if task.fail_package_on_failure:
                self.failures.append(message)
                return
            log.warning("%s (fail_package_on_failure is false: the package goes on)", message)
            self._commit([Change(handlers={key: TaskRecord(state="failed", error=message)})], [])

    def job_ended(self, job: HandlerJob) -> None:
        with self.lock:
            self.plan.ended(job)
            self._wake(spare=1)

    # -- the run's (workers.executor._Run) ------------------------------------------------

    def outputs(self) -> dict[str, Any]:
        raise NotImplementedError

    def task_failed(self, task: Task, exc: Exception, seconds: float, *, event: bool = True) -> None:
        raise NotImplementedError

    def _skip(self, task: Task, final: bool) -> None:
        raise NotImplementedError

    def _submit(self, changes: list[Change]) -> Ticket | None:
        raise NotImplementedError

    def _commit(self, changes: list[Change], reports: list[Any]) -> None:
        raise NotImplementedError

    def _durable(self, ticket: Ticket | None, reports: list[Any], reason: str = "") -> None:
        raise NotImplementedError

    def _wake(self, spare: int = 0) -> None:
        raise NotImplementedError
