"""The executor's interface: what one attempt is given, what it returns, who observes it.

:func:`workers.executor.execute` takes a :class:`RunRequest` and
:class:`ExecutionOptions` and returns a :class:`RunResult`; :class:`ExecutionHooks`
observe it while it runs (``workers.executor`` re-exports all four).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from checkpoints import CheckpointStore
from orchestrator.packages.kinds import CheckpointUsage
from orchestrator.packages.model import ForeachItem, Package
from orchestrator.state.states import RunState, TaskState


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
    handlers: dict[str, TaskState] = field(default_factory=dict)  # ``<job>:<handler id>`` -> its state
    resumed: bool = False
    checkpoint_kept: bool = False

    @property
    def succeeded(self) -> bool:
        return self.state is RunState.SUCCEEDED


class ExecutionHooks:
    """Observers of a run. Override what you need; every method is a no-op here.

    Units run in several threads, so the hooks are called from several threads,
    but never two calls at once: the executor serialises them (:class:`SerialHooks`),
    and the calls that report one durable record (``task_finished`` then
    ``checkpoint_saved``) come together. A success is reported only once the
    checkpoint record that holds it is durable: whoever sees it can rely on it.
    """

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

    def handler_finished(
        self, key: str, handler: str, state: TaskState, seconds: float, error: str | None
    ) -> None:
        """An event handler ended: ``key`` is its record's (``<job>:<handler id>``); ``state``
        succeeded, failed or skipped. Its tries were reported by ``task_started`` under its id."""

    def foreach_started(self, task_id: str, items: int, finished: int) -> None:
        """A foreach's items are known: ``items`` in all, ``finished`` of them by an earlier attempt."""

    def copy_progress(self, task_id: str, item: ForeachItem | None, detail: dict[str, Any]) -> None:
        """How far a running copy got: ``rows`` committed, ``rows_per_second`` (``done`` at its end)."""

    def task_log(
        self, task_id: str, item: ForeachItem | None, try_number: int, level: str, message: str
    ) -> None:
        """A unit logged a line (``ctx.log``, a shell task's output); ``message`` is already masked.

        Called from the unit's threads; a line reported here must be kept before the call
        returns (the task may be killed the next moment)."""

    def checkpoint_saved(self, size: int, seconds: float, reason: str) -> None:
        """A record is durable. ``reason``: start (the claiming snapshot), task, item, progress or
        compaction (a new snapshot); ``size`` and ``seconds`` are those of the write that carried it
        (records finishing together share one write)."""

    def checkpoint_failed(self, result: str, error: str) -> None:
        """A checkpoint write failed; ``result``: fenced, error or timeout."""

    def run_finished(self, result: RunResult) -> None: ...


class SerialHooks(ExecutionHooks):
    """Calls another set of hooks one call at a time, whatever thread calls."""

    def __init__(self, hooks: ExecutionHooks) -> None:
        self.hooks = hooks
        self._lock = threading.RLock()

    @contextlib.contextmanager
    def together(self) -> Iterator[None]:
        """Keep other threads' calls out of a sequence of calls."""
        with self._lock:
            yield

    def _call(self, method: Callable[..., None], *args: Any) -> None:
        with self._lock:
            method(*args)

    def run_started(self, run_id: str, resumed: bool, skipped: list[str]) -> None:
        self._call(self.hooks.run_started, run_id, resumed, skipped)

    def task_started(self, task_id: str, item: ForeachItem | None, try_number: int) -> None:
        self._call(self.hooks.task_started, task_id, item, try_number)

    def task_finished(
        self, task_id: str, item: ForeachItem | None, state: TaskState, seconds: float, error: str | None
    ) -> None:
        self._call(self.hooks.task_finished, task_id, item, state, seconds, error)

    def handler_finished(
        self, key: str, handler: str, state: TaskState, seconds: float, error: str | None
    ) -> None:
        self._call(self.hooks.handler_finished, key, handler, state, seconds, error)

    def foreach_started(self, task_id: str, items: int, finished: int) -> None:
        self._call(self.hooks.foreach_started, task_id, items, finished)

    def copy_progress(self, task_id: str, item: ForeachItem | None, detail: dict[str, Any]) -> None:
        self._call(self.hooks.copy_progress, task_id, item, detail)

    def task_log(
        self, task_id: str, item: ForeachItem | None, try_number: int, level: str, message: str
    ) -> None:
        self._call(self.hooks.task_log, task_id, item, try_number, level, message)

    def checkpoint_saved(self, size: int, seconds: float, reason: str) -> None:
        self._call(self.hooks.checkpoint_saved, size, seconds, reason)

    def checkpoint_failed(self, result: str, error: str) -> None:
        self._call(self.hooks.checkpoint_failed, result, error)

    def run_finished(self, result: RunResult) -> None:
        self._call(self.hooks.run_finished, result)


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
