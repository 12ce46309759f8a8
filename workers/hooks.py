"""Execution hooks of a worker attempt: several observers in turn, and the Prometheus metrics.

Both are safe to call from several threads (units of an attempt run in threads):
:class:`AllHooks` holds no state, and Prometheus metrics are thread-safe.
"""

from __future__ import annotations

from typing import Any

from orchestrator.observability.metrics import bounded, metrics
from orchestrator.packages.model import ForeachItem
from orchestrator.state.states import TaskState
from workers.executor import ExecutionHooks, RunResult


class AllHooks(ExecutionHooks):
    """Several sets of hooks called in turn (the SQL reporter first)."""

    def __init__(self, *hooks: ExecutionHooks) -> None:
        self.hooks = hooks

    def run_started(self, run_id: str, resumed: bool, skipped: list[str]) -> None:
        for hooks in self.hooks:
            hooks.run_started(run_id, resumed, skipped)

    def task_started(self, task_id: str, item: ForeachItem | None, try_number: int) -> None:
        for hooks in self.hooks:
            hooks.task_started(task_id, item, try_number)

    def task_finished(
        self, task_id: str, item: ForeachItem | None, state: TaskState, seconds: float, error: str | None
    ) -> None:
        for hooks in self.hooks:
            hooks.task_finished(task_id, item, state, seconds, error)

    def handler_finished(
        self, key: str, handler: str, state: TaskState, seconds: float, error: str | None
    ) -> None:
        for hooks in self.hooks:
            hooks.handler_finished(key, handler, state, seconds, error)

    def foreach_started(self, task_id: str, items: int, finished: int) -> None:
        for hooks in self.hooks:
            hooks.foreach_started(task_id, items, finished)

    def copy_progress(self, task_id: str, item: ForeachItem | None, detail: dict[str, Any]) -> None:
        for hooks in self.hooks:
            hooks.copy_progress(task_id, item, detail)

    def task_log(
        self, task_id: str, item: ForeachItem | None, try_number: int, level: str, message: str
    ) -> None:
        for hooks in self.hooks:
            hooks.task_log(task_id, item, try_number, level, message)

    def checkpoint_saved(self, size: int, seconds: float, reason: str) -> None:
        for hooks in self.hooks:
            hooks.checkpoint_saved(size, seconds, reason)

    def checkpoint_failed(self, result: str, error: str) -> None:
        for hooks in self.hooks:
            hooks.checkpoint_failed(result, error)

    def run_finished(self, result: RunResult) -> None:
        for hooks in self.hooks:
            hooks.run_finished(result)


class MetricsHooks(ExecutionHooks):
    """Execution hooks that observe one attempt's tasks and checkpoints."""

    def __init__(self, package: str) -> None:
        self.m = metrics()
        self.package = bounded("package", package)
        self._saved = self.m.checkpoint_writes.labels(result="ok")  # once: a foreach saves per item

    def run_started(self, run_id: str, resumed: bool, skipped: list[str]) -> None:
        if skipped:
            self.m.tasks_skipped.labels(package=self.package).inc(len(skipped))

    def task_finished(
        self,
        task_id: str,
        item: ForeachItem | None,
        state: TaskState,
        seconds: float,
        error: str | None,
    ) -> None:
        if item is not None:  # foreach items: the task as a whole is observed once
            return
        task = bounded("task", f"{self.package}/{task_id}").partition("/")[2] or "other"
        if state is TaskState.FAILED:
            self.m.task_failures.labels(package=self.package, task=task).inc()
        elif state is TaskState.SUCCEEDED:
            self.m.task_duration.labels(package=self.package, task=task).observe(seconds)

    def checkpoint_saved(self, size: int, seconds: float, reason: str) -> None:
        self._saved.inc()
        self.m.checkpoint_write_seconds.observe(seconds)
        self.m.checkpoint_bytes.observe(size)

    def checkpoint_failed(self, result: str, error: str) -> None:
        self.m.checkpoint_writes.labels(result=result).inc()

    def run_finished(self, result: RunResult) -> None:
        self.m.runs_finished.labels(package=self.package, state=result.state.value).inc()
