"""The package executor: runs a package's DAG with checkpoints, usable without any broker.

:func:`execute` is what ``orchestrator run`` calls in-process and what a
worker node calls for one attempt of a run. It

* loads the run's checkpoint (per ``checkpoint.usage``) and skips finished
  tasks and foreach items, restoring variables, outputs and in-task progress;
* writes the checkpoint (fenced by the attempt's epoch) once at start, after
  every finished task and foreach item, and on every ``ctx.progress.save``;
* retries failed tasks, enforces timeouts, records non-fatal failures and
  lets independent branches finish when one branch fails;
* deletes the checkpoint when the run succeeded (unless told to keep it).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any, NoReturn

from checkpoints import (
    Checkpoint,
    CheckpointError,
    CheckpointNotFound,
    CheckpointStore,
    Fenced,
    SecretBox,
    TaskRecord,
)
from checkpoints.format import utcnow
from orchestrator.observability.logs import log_context
from orchestrator.observability.masking import Masker
from orchestrator.packages.kinds import CheckpointUsage
from orchestrator.packages.model import ForeachItem, Package, Task, item_key
from orchestrator.packages.templating import TemplateError, render
from orchestrator.packages.variables import missing_required, resolve
from orchestrator.state.states import RunState, TaskState
from workers.context import Flag, Progress, TaskContext, TaskVariables, read_only
from workers.errors import (
    AttemptFenced,
    CheckpointWriteFailed,
    RunCancelled,
    RunInterrupted,
    TaskCancelled,
    TaskError,
)
from workers.invoke import (
    call_python,
    checked_output,
    resolve_callable,
    run_shell,
    shell_command,
)

log = logging.getLogger(__name__)
task_log = logging.getLogger("orchestrator.task")


class ExecutionHooks:
    """Observers of a run. Override what you need; every method is a no-op here."""

    def run_started(self, run_id: str, resumed: bool, skipped: list[str]) -> None: ...

    def task_started(self, task_id: str, item: ForeachItem | None, try_number: int) -> None: ...

    def task_finished(
        self,
        task_id: str,
        item: ForeachItem | None,
        state: TaskState,
        seconds: float,
        error: str | None,
    ) -> None: ...

    def checkpoint_saved(self, size: int, seconds: float, reason: str) -> None:
        """``reason``: start (the claiming write), task, item or progress."""

    def checkpoint_failed(self, result: str, error: str) -> None: ...

    def run_finished(self, result: RunResult) -> None: ...


@dataclass(frozen=True)
class _Either:
    first: threading.Event
    second: threading.Event

    def is_set(self) -> bool:
        return self.first.is_set() or self.second.is_set()


@dataclass(frozen=True)
class RunRequest:
    """One attempt of one run: the package, the given variables and the attempt's identity."""

    package: Package
    run_id: str
    variables: Mapping[str, Any] = field(default_factory=dict)
    epoch: int = 1
    attempt: int = 1
    usage: CheckpointUsage | None = None
    save: bool | None = None


@dataclass
class ExecutionOptions:
    """How the executor behaves on this node; the defaults suit a local ``orchestrator run``."""

    store: CheckpointStore | None = None
    secret_key: str | None = None
    hooks: ExecutionHooks = field(default_factory=ExecutionHooks)
    guard: Callable[[], None] | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    keep_checkpoint: bool = False
    allowed_modules: tuple[str, ...] = ()
    allow_shell: bool = True


@dataclass
class RunResult:
    """The outcome of an attempt, as the CLI and the worker report it."""

    run_id: str
    package: str
    state: RunState
    tasks: dict[str, TaskState]
    error: str | None = None
    outputs: dict[str, Any] = field(default_factory=dict)
    variables: dict[str, Any] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    resumed: bool = False
    checkpoint_kept: bool = False

    @property
    def succeeded(self) -> bool:
        return self.state is RunState.SUCCEEDED


def topological_order(package: Package) -> list[Task]:
    """Tasks in dependency order; among ready tasks, declaration order."""
    remaining = {task.id: set(task.depends_on) for task in package.tasks}
    order: list[Task] = []
    while remaining:
        ready = [t for t in package.tasks if t.id in remaining and not remaining[t.id]]
        if not ready:  # validation refuses cycles; this guards direct construction misuse
            raise TaskError(f"dependency cycle among {sorted(remaining)}")
        for task in ready:
            del remaining[task.id]
            for deps in remaining.values():
                deps.discard(task.id)
        order.extend(ready)
    return order


def execute(request: RunRequest, options: ExecutionOptions | None = None) -> RunResult:
    """Run (or resume) one attempt of a package.

    Raises ``InvalidInput`` subclasses and checkpoint errors (mismatch, not
    found, corrupt) before any task runs; raises :class:`AttemptFenced` when a
    newer attempt took the run over. Every other outcome is a :class:`RunResult`.
    """
    run = _Run(request, options or ExecutionOptions())
    run.prepare()
    return run.run()


class _Run:
    """The mutable state of one attempt; see :func:`execute`."""

    def __init__(self, request: RunRequest, options: ExecutionOptions) -> None:
        self.request = request
        self.package = request.package
        self.options = options
        self.hooks = options.hooks
        self.stop = options.stop
        self.store = options.store
        self.box = SecretBox(options.secret_key) if options.secret_key else None
        self.saving = self.store is not None and (
            request.save if request.save is not None else self.package.checkpoint.save
        )
        self.lock = threading.RLock()
        self.finished: dict[str, TaskRecord] = {}
        self.items: dict[str, dict[str, Any]] = {}
        self.progress: dict[str, Any] = {}
        self.variables: dict[str, Any] = {}
        self.states = {task.id: TaskState.PENDING for task in self.package.tasks}
        self.failures: list[str] = []
        self.skipped: list[str] = []
        self.resumed = False
        self.created_at: datetime = utcnow()
        self.interrupted: RunInterrupted | None = None
        self.masker = Masker()

    # -- start ---------------------------------------------------------------

    def prepare(self) -> None:
        """Resolve variables and restore the checkpoint; then write the claiming checkpoint."""
        given = resolve(self.package, self.request.variables)
        checkpoint = self._load()
        self.variables = dict(given)
        if checkpoint is not None:
            self._restore(checkpoint, given)
        missing_required(self.package, self.variables)
        self.masker = Masker(v for n, v in self.variables.items() if self.package.variables[n].sensitive)
        self._save("start")  # the first write carries the new epoch: older attempts are fenced from here

    def _load(self) -> Checkpoint | None:
        usage = CheckpointUsage(self.request.usage or self.package.checkpoint.usage)
        if usage is CheckpointUsage.NEVER or self.store is None:
            if usage is CheckpointUsage.ALWAYS:
                raise CheckpointNotFound("checkpoint usage 'always' needs a checkpoint store")
            return None
        checkpoint = self.store.load(
            self.package.name, self.request.run_id, definition_hash=self.package.definition_hash
        )
        if checkpoint is None and usage is CheckpointUsage.ALWAYS:
            raise CheckpointNotFound(
                f"checkpoint usage is 'always' but run {self.request.run_id!r} of package "
                f"{self.package.name!r} has no checkpoint in {self.store!r}"
            )
        return checkpoint

    def _restore(self, checkpoint: Checkpoint, given: Mapping[str, Any]) -> None:
        self.resumed = True
        self.created_at = checkpoint.created_at
        self.finished = dict(checkpoint.tasks)
        self.items = {k: dict(v) for k, v in checkpoint.items.items()}
        self.progress = dict(checkpoint.progress)
        restored = dict(checkpoint.variables)
        if self.box is not None:
            restored.update({n: self.box.decrypt(n, t) for n, t in checkpoint.secrets.items()})
        for name, value in restored.items():
            if name in self.request.variables and given.get(name) != value:
                log.warning("variable %r restored from the checkpoint; the given value is ignored", name)
        self.variables.update(restored)
        for task in self.package.tasks:
            if task.always_rerun and task.id in self.finished:
                del self.finished[task.id]
                self.items.pop(task.id, None)
        for task_id, record in self.finished.items():
            self.states[task_id] = TaskState(record.state)
        self.skipped = [t.id for t in self.package.tasks if t.id in self.finished]

    # -- the run ---------------------------------------------------------------

    def run(self) -> RunResult:
        with log_context(run_id=self.request.run_id, attempt=self.request.attempt, mask=self.masker):
            return self._run()

    def _run(self) -> RunResult:
        self.hooks.run_started(self.request.run_id, self.resumed, self.skipped)
        try:
            for task in topological_order(self.package):
                if task.id not in self.finished:
                    self._run_task(task)
            result = self._result()
        except AttemptFenced:
            self.stop.set()
            raise
        except (KeyboardInterrupt, RunCancelled) as exc:
            self.stop.set()
            reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else str(exc)
            result = self._result(RunState.CANCELLED, f"run cancelled ({reason}); checkpoint kept")
        except CheckpointWriteFailed as exc:
            self.stop.set()
            result = self._result(RunState.FAILED, str(exc))
        if result.state is RunState.SUCCEEDED:
            self._delete_checkpoint()
        result.checkpoint_kept = self.saving and (
            result.state is not RunState.SUCCEEDED or self.options.keep_checkpoint
        )
        self.hooks.run_finished(result)
        return result

    def _result(self, state: RunState | None = None, error: str | None = None) -> RunResult:
        if state is None:
            state = RunState.FAILED if self.failures else RunState.SUCCEEDED
            error = "; ".join(self.failures) or None
        for task_id, task_state in self.states.items():
            if task_state in (TaskState.PENDING, TaskState.RUNNING) and state is RunState.CANCELLED:
                self.states[task_id] = TaskState.CANCELLED
        public = {n: ("***" if self.package.variables[n].sensitive else v) for n, v in self.variables.items()}
        return RunResult(
            run_id=self.request.run_id,
            package=self.package.name,
            state=state,
            tasks=dict(self.states),
            error=error,
            outputs={k: r.output for k, r in self.finished.items()},
            variables=public,
            skipped=list(self.skipped),
            resumed=self.resumed,
        )

    def _run_task(self, task: Task) -> None:
        self._check_stop()
        if any(dependency not in self.finished for dependency in task.depends_on):
            self.states[task.id] = TaskState.UPSTREAM_FAILED
            return
        self.states[task.id] = TaskState.RUNNING
        started = time.monotonic()
        try:
            if task.foreach is not None:  # its items are reported one by one; then the whole task
                output, seconds = self._run_foreach(task), None
            else:
                output, _, seconds = self._run_unit(task, None)
        except (RunInterrupted, KeyboardInterrupt):
            raise
        except Exception as exc:
            self._task_failed(task, exc, time.monotonic() - started)
            return
        seconds = time.monotonic() - started if seconds is None else seconds
        with self.lock:
            self.finished[task.id] = TaskRecord(state="succeeded", output=output)
            self.items.pop(task.id, None)
            self.states[task.id] = TaskState.SUCCEEDED
            done = partial(self.hooks.task_finished, task.id, None, TaskState.SUCCEEDED, seconds, None)
            self._save("task", then=done)

    def _task_failed(self, task: Task, exc: Exception, seconds: float) -> None:
        error = self.masker(f"task {task.id!r} failed: {_describe(exc)}")
        self.states[task.id] = TaskState.FAILED
        if task.foreach is not None:
            self.hooks.task_finished(task.id, None, TaskState.FAILED, seconds, error)
        if task.fail_package_on_failure:
            self.failures.append(error)
            return
        log.warning("%s (fail_package_on_failure is false: the package goes on)", error)
        with self.lock:
            self.finished[task.id] = TaskRecord(state="failed", error=error)
            self._save("task")

    def _run_foreach(self, task: Task) -> dict[str, Any]:
        items = self._foreach_items(task)
        done = self.items.setdefault(task.id, {})
        for item in items:
            key = item_key(item)
            if key in done:
                continue
            output, variables, seconds = self._run_unit(task, item)
            with self.lock:
                done[key] = output
                self.variables = variables
                self.progress.pop(_progress_key(task.id, item), None)
                self._save(
                    "item",
                    then=partial(self.hooks.task_finished, task.id, item, TaskState.SUCCEEDED, seconds, None),
                )
        return {item_key(item): done[item_key(item)] for item in items}

    def _foreach_items(self, task: Task) -> list[ForeachItem]:
        if isinstance(task.foreach, list):
            return task.foreach
        try:
            items = render(task.foreach, self.variables, self._outputs())
        except TemplateError as exc:
            raise TaskError(f"foreach: {exc}") from exc
        if not isinstance(items, list) or not all(isinstance(i, str | int | float | bool) for i in items):
            raise TaskError(f"foreach expression gave {type(items).__name__}, not a list of scalars")
        if len({item_key(i) for i in items}) != len(items):
            raise TaskError("foreach expression gave repeated items")
        return items

    def _run_unit(self, task: Task, item: ForeachItem | None) -> tuple[Any, dict[str, Any], float]:
        """Run one task (or one foreach item) with its retries; return its output, variables and
        the seconds of the try that succeeded. Its success is reported by the caller, once the
        checkpoint records it."""
        for try_number in range(1, task.retries + 2):
            self._check_stop()
            self.hooks.task_started(task.id, item, try_number)
            started = time.monotonic()
            try:
                with log_context(task=task.id):
                    output, variables = self._invoke(task, item, try_number)
            except (RunInterrupted, KeyboardInterrupt):
                raise
            except Exception as exc:
                self._raise_if_interrupted()
                error = self.masker(_describe(exc))
                self.hooks.task_finished(task.id, item, TaskState.FAILED, time.monotonic() - started, error)
                if try_number > task.retries:
                    raise
                log.warning(
                    "task %r%s failed (try %d of %d): %s; retrying in %gs",
                    task.id,
                    _item_suffix(item),
                    try_number,
                    task.retries + 1,
                    error,
                    task.retry_delay,
                )
                if self.stop.wait(task.retry_delay):
                    self._check_stop()
                continue
            seconds = time.monotonic() - started
            if item is None:
                with self.lock:
                    self.variables = variables
                    self.progress.pop(task.id, None)
            return output, variables, seconds
        raise AssertionError("unreachable: the last try either returns or raises")

    def _invoke(self, task: Task, item: ForeachItem | None, try_number: int) -> tuple[Any, dict[str, Any]]:
        key = _progress_key(task.id, item)
        task_stop = threading.Event()
        stopped = _Either(task_stop, self.stop)
        variables = TaskVariables(self.package, self.variables)

        def save_progress(value: Any) -> None:
            checked_output(task.id, value)
            with self.lock:
                if stopped.is_set():
                    raise TaskCancelled(f"task {task.id!r}: attempt stopped; progress not saved")
                self.progress[key] = value
                self.variables = variables.snapshot()
                self._save("progress")

        ctx = TaskContext(
            run_id=self.request.run_id,
            package=self.package.name,
            task_id=task.id,
            attempt=self.request.attempt,
            epoch=self.request.epoch,
            params={},
            vars=variables,
            outputs=read_only(self._outputs()),
            item=item,
            progress=Progress(self.progress.get(key), save_progress, stopped),
            idempotency_key=f"{self.request.run_id}:{task.id}{_item_suffix(item, ':')}",
            log=logging.LoggerAdapter(
                task_log,
                {"run_id": self.request.run_id, "task": task.id, "attempt": self.request.attempt},
            ),
            _cancelled=stopped,
        )
        output = self._call(task, ctx, task_stop, stopped)
        # A task that returned because it saw ctx.cancelled did not finish its work:
        # it must not be recorded as done (a resumed run runs it again).
        self._check_stop()
        return checked_output(task.id, output), variables.snapshot()

    def _call(self, task: Task, ctx: TaskContext, task_stop: threading.Event, stopped: Flag) -> Any:
        try:
            if task.shell is not None:
                if not self.options.allow_shell:
                    raise TaskError(f"shell task {task.id!r} refused: ORCHESTRATOR_ALLOW_SHELL is false")
                command = shell_command(task, ctx.vars, ctx.outputs)
                return run_shell(command, ctx, stopped, task.timeout, self.masker)
            assert task.python is not None
            ctx.params = render(task.params, ctx.vars, ctx.outputs)
        except TemplateError as exc:
            raise TaskError(f"params: {exc}") from exc
        function = resolve_callable(task.python, self.options.allowed_modules)
        return call_python(function, ctx, task_stop, task.timeout)

    # -- checkpoint ------------------------------------------------------------

    def _outputs(self) -> dict[str, Any]:
        return {task_id: record.output for task_id, record in self.finished.items()}

    def _save(self, reason: str, then: Callable[[], None] | None = None) -> None:
        """Write the checkpoint (a no-op when saving is off); stop the run if it cannot.

        ``then`` reports what the checkpoint records (a task or item done); it runs only
        once the write is durable, so a completion anyone has seen is never run again.
        """
        if not self.saving or self.store is None:
            if then is not None:
                then()
            return
        with self.lock:
            self._guard()
            checkpoint = self._checkpoint()
            started = time.perf_counter()
            try:
                size = self.store.save(checkpoint)
            except Fenced as exc:
                self.hooks.checkpoint_failed("fenced", str(exc))
                self._interrupt(AttemptFenced(str(exc)))
            except (CheckpointError, OSError) as exc:
                self.hooks.checkpoint_failed("error", str(exc))
                self._interrupt(CheckpointWriteFailed(f"checkpoint write failed: {exc}"))
            seconds = time.perf_counter() - started
            if then is not None:
                then()
            self.hooks.checkpoint_saved(size, seconds, reason)

    def _checkpoint(self) -> Checkpoint:
        sensitive = {n for n, v in self.package.variables.items() if v.sensitive}
        secrets = {}
        if self.box is not None:
            secrets = {n: self.box.encrypt(v) for n, v in self.variables.items() if n in sensitive}
        return Checkpoint(
            package=self.package.name,
            definition_hash=self.package.definition_hash,
            run_id=self.request.run_id,
            epoch=self.request.epoch,
            attempt=self.request.attempt,
            tasks=self.finished,
            items=self.items,
            variables={n: v for n, v in self.variables.items() if n not in sensitive},
            secrets=secrets,
            progress=self.progress,
            created_at=self.created_at,
        )

    def _delete_checkpoint(self) -> None:
        if not self.saving or self.store is None or self.options.keep_checkpoint:
            return
        self._guard()
        try:
            self.store.delete(self.package.name, self.request.run_id, epoch=self.request.epoch)
        except Fenced as exc:
            raise AttemptFenced(str(exc)) from exc

    # -- stopping ----------------------------------------------------------------

    def _guard(self) -> None:
        if self.options.guard is not None:
            try:
                self.options.guard()
            except AttemptFenced as exc:
                self._interrupt(exc)

    def _interrupt(self, exc: RunInterrupted) -> NoReturn:
        """Stop the run: remember why (so a task swallowing the error cannot hide it) and raise."""
        self.interrupted = self.interrupted or exc
        self.stop.set()
        raise exc

    def _raise_if_interrupted(self) -> None:
        if self.interrupted is not None:
            raise self.interrupted

    def _check_stop(self) -> None:
        self._raise_if_interrupted()
        self._guard()
        if self.stop.is_set():
            self._interrupt(RunCancelled("stop requested"))


def _progress_key(task_id: str, item: ForeachItem | None) -> str:
    return task_id if item is None else f"{task_id}:{item_key(item)}"


def _item_suffix(item: ForeachItem | None, sep: str = "") -> str:
    if item is None:
        return ""
    return f"{sep}{item_key(item)}" if sep else f"[{item_key(item)}]"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TaskError | TaskCancelled):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
