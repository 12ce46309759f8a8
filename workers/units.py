"""Running one unit (a task, or one foreach item) in a worker thread: its tries and its context.

:class:`UnitRunner` is the part of an attempt that runs task code. It builds
the unit's :class:`~workers.context.TaskContext` from the run's state, calls
the task (a Python callable, or a shell command in a subprocess) with its
retries and timeout, and hands the outcome back to the run (:class:`Host`),
which records it. Whatever a unit raises is sorted here: an ``Exception`` is
the unit's failure; a :class:`~workers.errors.RunInterrupted` or a
``KeyboardInterrupt`` stops the whole run; anything else (``SystemExit``, a
test's simulated crash) also stops it and is re-raised by :func:`~workers.executor.execute`.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

from checkpoints import Checkpoint
from orchestrator.observability.logs import log_context
from orchestrator.observability.masking import Masker
from orchestrator.packages.model import Package, Task
from orchestrator.packages.templating import TemplateError, render
from orchestrator.state.states import TaskState
from workers.context import Flag, Progress, TaskContext, TaskLogger, TaskVariables, read_only
from workers.errors import RunInterrupted, TaskCancelled, TaskError, VariableConflict
from workers.etl.connections import EnginePool
from workers.etl.task import etl_function
from workers.execution import ExecutionOptions, RunRequest, SerialHooks
from workers.invoke import call_python, checked_output, resolve_callable, run_shell, shell_command
from workers.plan import Unit

log = logging.getLogger(__name__)
task_log = logging.getLogger("orchestrator.task")


class Host(Protocol):
    """What a unit needs from its run (the executor's ``_Run``)."""

    request: RunRequest
    package: Package
    options: ExecutionOptions
    hooks: SerialHooks
    masker: Masker
    stop: threading.Event
    lock: threading.Condition
    variables: dict[str, Any]
    state: Checkpoint
    interrupted: BaseException | None
    engines: EnginePool

    def outputs(self) -> dict[str, Any]: ...

    def check_stop(self) -> None: ...

    def interrupt(self, exc: BaseException) -> None: ...

    def unit_succeeded(self, unit: Unit, output: Any, writes: dict[str, Any], seconds: float) -> None: ...

    def unit_failed(self, unit: Unit, exc: Exception, seconds: float) -> None: ...

    def unit_abandoned(self, unit: Unit) -> None: ...

    def save_progress(self, unit: Unit, value: Any, writes: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class _Either:
    first: threading.Event
    second: threading.Event

    def is_set(self) -> bool:
        return self.first.is_set() or self.second.is_set()


class UnitRunner:
    """Runs units of one attempt; thread-safe (one call of :meth:`execute` per worker thread)."""

    def __init__(self, host: Host) -> None:
        self.host = host

    def execute(self, unit: Unit) -> None:
        """Run ``unit`` with its retries and hand the outcome to the run."""
        started = time.monotonic()
        try:
            output, variables, seconds = self.tries(unit)
            writes = variables.changes()
        except (RunInterrupted, KeyboardInterrupt) as exc:
            self._abandon(unit, exc)
            return
        except Exception as exc:
            self.host.unit_failed(unit, exc, time.monotonic() - started)
            return
        except BaseException as exc:  # a crash: stop everything, execute() re-raises it
            self._abandon(unit, exc)
            return
        try:
            self.host.unit_succeeded(unit, output, writes, seconds)
        except VariableConflict as exc:
            error = self.host.masker(describe(exc))
            self.host.hooks.task_finished(unit.task.id, unit.item, TaskState.FAILED, seconds, error)
            self.host.unit_failed(unit, exc, seconds)
        except BaseException as exc:  # after its record was queued: only an interruption is left
            self.host.interrupt(exc)

    def _abandon(self, unit: Unit, exc: BaseException) -> None:
        self.host.interrupt(exc)
        self.host.unit_abandoned(unit)

    def tries(self, unit: Unit) -> tuple[Any, TaskVariables, float]:
        """Run the unit until a try succeeds; return its output, its variables and its seconds.

        Its success is recorded by the caller (the run), which reports it once durable.
        """
        task, item = unit.task, unit.item
        for try_number in range(1, task.retries + 2):
            self.host.check_stop()
            self.host.hooks.task_started(task.id, item, try_number)
            started = time.monotonic()
            try:
                with log_context(task=task.id):
                    output, variables = self._invoke(unit, try_number)
            except (RunInterrupted, KeyboardInterrupt):
                raise
            except Exception as exc:
                if self.host.interrupted is not None:  # a task swallowing the stop cannot hide it
                    raise self.host.interrupted from exc
                error = self.host.masker(describe(exc))
                seconds = time.monotonic() - started
                self.host.hooks.task_finished(task.id, item, TaskState.FAILED, seconds, error)
                if try_number > task.retries or isinstance(exc, VariableConflict):
                    raise
                log.warning(
                    "task %s failed (try %d of %d): %s; retrying in %gs",
                    unit.label,
                    try_number,
                    task.retries + 1,
                    error,
                    task.retry_delay,
                )
                if self.host.stop.wait(task.retry_delay):
                    self.host.check_stop()
                continue
            return output, variables, time.monotonic() - started
        raise AssertionError("unreachable: the last try either returns or raises")

    def _invoke(self, unit: Unit, try_number: int) -> tuple[Any, TaskVariables]:
        host, task, request = self.host, unit.task, self.host.request
        task_stop = threading.Event()
        stopped = _Either(task_stop, host.stop)
        with host.lock:
            # An event handler assigns no variable: it may run beside any unit (docs/control-flow.md).
            writes = () if unit.handler is not None else task.writes
            variables = TaskVariables(host.package, host.variables, writes=writes, unit=unit.label)
            outputs = read_only(host.outputs())
            saved = host.state.progress.get(unit.key)

        def save_progress(value: Any) -> None:
            checked_output(task.id, value)
            if stopped.is_set():
                raise TaskCancelled(f"task {unit.label!r}: attempt stopped; progress not saved")
            host.save_progress(unit, value, variables.changes())

        ctx = TaskContext(
            run_id=request.run_id,
            package=host.package.name,
            task_id=task.id,
            attempt=request.attempt,
            epoch=request.epoch,
            params={},
            vars=variables,
            outputs=outputs,
            item=unit.item,
            progress=Progress(saved, save_progress, stopped),
            idempotency_key=f"{request.run_id}:{unit.key}",
            log=TaskLogger(
                task_log,
                {"run_id": request.run_id, "task": task.id, "attempt": request.attempt},
                lambda level, text: host.hooks.task_log(
                    task.id, unit.item, try_number, level, host.masker(text)
                ),
            ),
            _cancelled=stopped,
            event=unit.event,
        )
        output = self._call(task, ctx, task_stop, stopped)
        # A task that returned because it saw ctx.cancelled did not finish its work:
        # it must not be recorded as done (a resumed run runs it again).
        host.check_stop()
        return checked_output(task.id, output), variables

    def _call(self, task: Task, ctx: TaskContext, task_stop: threading.Event, stopped: Flag) -> Any:
        options = self.host.options
        try:
            if task.shell is not None:
                if not options.allow_shell:
                    raise TaskError(f"shell task {task.id!r} refused: ORCHESTRATOR_ALLOW_SHELL is false")
                command = shell_command(task, ctx.vars, ctx.outputs)
                return run_shell(command, ctx, stopped, task.timeout, self.host.masker)
            ctx.params = render(task.params, ctx.vars, ctx.outputs)
        except TemplateError as exc:
            raise TaskError(f"params: {exc}") from exc
        if task.python is None:  # a sql or copy task (workers.etl)
            report = functools.partial(self.host.hooks.copy_progress, task.id, ctx.item)
            function = etl_function(
                task, self.host.package, options.allowed_modules, report, self.host.engines
            )
        else:
            function = resolve_callable(task.python, options.allowed_modules)
        return call_python(function, ctx, task_stop, task.timeout)


def describe(exc: BaseException) -> str:
    if isinstance(exc, TaskError | TaskCancelled):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
