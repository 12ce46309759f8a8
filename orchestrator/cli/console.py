"""What people see while a package runs: a live progress bar on a terminal, lines elsewhere."""

from __future__ import annotations

import threading
from types import TracebackType

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from orchestrator.packages.model import ForeachItem, Package, item_key
from orchestrator.state.states import RunState, TaskState
from workers.executor import ExecutionHooks, RunResult

_STATE_STYLE = {
    TaskState.SUCCEEDED: "green",
    TaskState.FAILED: "red",
    TaskState.UPSTREAM_FAILED: "yellow",
    TaskState.CANCELLED: "yellow",
    TaskState.PENDING: "dim",
    TaskState.RUNNING: "cyan",
    TaskState.SKIPPED: "dim",
}

_ENDED = (TaskState.SUCCEEDED, TaskState.FAILED, TaskState.SKIPPED)
_MARKS = {TaskState.SUCCEEDED: "[green]✓[/]", TaskState.SKIPPED: "[dim]-[/]"}


def _unit(task_id: str, item: ForeachItem | None) -> tuple[str, str | None]:
    return task_id, None if item is None else item_key(item)


def _label(task_id: str, item: ForeachItem | None) -> str:
    """``task`` or ``task[item]``, escaped for rich markup."""
    return escape(task_id if item is None else f"{task_id}[{item_key(item)}]")


class ProgressDisplay(ExecutionHooks):
    """Execution hooks drawing progress; a context manager around the run.

    The package's bar counts finished tasks and names the units in flight (several
    run at once); each foreach gets a bar of its own counting items. Thread-safe.
    """

    def __init__(self, package: Package, console: Console, *, quiet: bool = False) -> None:
        self.package = package
        self.console = console
        self.quiet = quiet
        self.live = console.is_terminal and not quiet
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
            disable=not self.live,
        )
        self.bar = self.progress.add_task(package.name, total=len(package.tasks))
        self._lock = threading.Lock()
        self._running: dict[tuple[str, str | None], str] = {}  # units in flight, in start order
        self._item_bars: dict[str, TaskID] = {}

    def __enter__(self) -> ProgressDisplay:
        self.progress.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.progress.stop()

    def _say(self, text: str) -> None:
        if not self.quiet:
            self.console.print(text, highlight=False)

    def run_started(self, run_id: str, resumed: bool, skipped: list[str]) -> None:
        if resumed:
            self._say(
                f"[bold]resuming[/] run {run_id} from its checkpoint: "
                f"{len(skipped)} finished task(s) skipped" + (f" ({', '.join(skipped)})" if skipped else "")
            )
        self.progress.update(self.bar, completed=len(skipped))

    def task_started(self, task_id: str, item: ForeachItem | None, try_number: int) -> None:
        retry = f" (try {try_number})" if try_number > 1 else ""
        with self._lock:
            self._running[_unit(task_id, item)] = f"{_label(task_id, item)}{retry}"
            self._describe()

    def foreach_started(self, task_id: str, items: int, finished: int) -> None:
        with self._lock:
            self._item_bars[task_id] = self.progress.add_task(
                f"  {escape(task_id)}", total=items, completed=finished
            )

    def _describe(self) -> None:
        running = list(self._running.values())
        shown = ", ".join(running[:3]) + (f" +{len(running) - 3} more" if len(running) > 3 else "")
        description = f"{self.package.name}: {shown}" if shown else self.package.name
        self.progress.update(self.bar, description=description)

    def task_finished(
        self,
        task_id: str,
        item: ForeachItem | None,
        state: TaskState,
        seconds: float,
        error: str | None,
    ) -> None:
        mark = _MARKS.get(state, "[red]✗[/]")
        detail = f" {escape(error)}" if error else (" skipped" if state is TaskState.SKIPPED else "")
        with self._lock:
            self._say(f"{mark} {_label(task_id, item)} [dim]{seconds:.2f}s[/]{detail}")
            self._running.pop(_unit(task_id, item), None)
            if item is None and state in (TaskState.SUCCEEDED, TaskState.SKIPPED):
                self.progress.advance(self.bar)
            elif item is not None and state is TaskState.SUCCEEDED and task_id in self._item_bars:
                self.progress.advance(self._item_bars[task_id])
            self._describe()

    def handler_finished(
        self, key: str, handler: str, state: TaskState, seconds: float, error: str | None
    ) -> None:
        mark = _MARKS.get(state, "[red]✗[/]")
        detail = f" {escape(error)}" if error else (" skipped" if state is TaskState.SKIPPED else "")
        with self._lock:
            self._say(f"{mark} handler {escape(key)} [dim]{seconds:.2f}s[/]{detail}")
            self._running.pop(_unit(handler, None), None)
            self._describe()

    def run_finished(self, result: RunResult) -> None:
        self.progress.update(
            self.bar,
            completed=sum(s in _ENDED for s in result.tasks.values()),
        )


def print_result(console: Console, result: RunResult) -> None:
    """A per-task table and the outcome line."""
    table = Table(title=f"run {result.run_id} of {result.package}", show_edge=False)
    table.add_column("task")
    table.add_column("state")
    for task_id, state in result.tasks.items():
        note = " (from checkpoint)" if task_id in result.skipped else ""
        table.add_row(task_id, f"[{_STATE_STYLE[state]}]{state.value}[/]{note}")
    for key, state in result.handlers.items():
        table.add_row(f"{escape(key)} (handler)", f"[{_STATE_STYLE[state]}]{state.value}[/]")
    console.print(table)
    if result.state is RunState.SUCCEEDED:
        console.print("[bold green]succeeded[/]")
    else:
        console.print(f"[bold red]{result.state.value}[/]: {escape(result.error or '')}")
        if result.checkpoint_kept:
            console.print("checkpoint kept: run the same command again to resume")
