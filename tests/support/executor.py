"""The in-process executor's test kit: a package built from tasks of :mod:`tests.support.tasks`,
run by :func:`workers.executor.execute` on a filesystem checkpoint store, with the tasks'
execution log (registered in tests/conftest.py).

A test module that wants every test to log its executions (and start with no task hooks)
requests ``task_log`` from an autouse fixture of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from checkpoints import FilesystemCheckpointStore
from orchestrator.packages.model import Package
from orchestrator.packages.validation import parse_package
from tests.support import tasks as T
from workers.context import TaskContext
from workers.executor import ExecutionOptions, RunRequest, RunResult, execute


class Killed(BaseException):
    """Simulates the process dying: nothing in the executor catches it."""


@pytest.fixture
def task_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Where the tasks of :mod:`tests.support.tasks` log their executions; no hooks before or after."""
    path = tmp_path / "executions.jsonl"
    monkeypatch.setenv(T.LOG_ENV, str(path))
    T.HOOKS.clear()
    yield path
    T.HOOKS.clear()


@pytest.fixture
def log(task_log: Path) -> Callable[[], list[dict[str, Any]]]:
    """The executions logged so far."""
    return lambda: T.read_log(task_log)


@pytest.fixture
def store(tmp_path: Path) -> FilesystemCheckpointStore:
    return FilesystemCheckpointStore(tmp_path / "checkpoints")


def package(*tasks: dict[str, Any], **extra: Any) -> Package:
    return parse_package({"name": "pkg", "tasks": list(tasks), **extra})


def task(task_id: str, *deps: Any, fn: str = "step", **fields: Any) -> dict[str, Any]:
    """A task running ``tests.support.tasks:<fn>``; ``deps`` are task ids or ``{task, on}`` constraints."""
    return {"id": task_id, "python": f"tests.support.tasks:{fn}", "depends_on": list(deps), **fields}


def run(pkg: Package, store: Any, run_id: str = "r1", **kwargs: Any) -> RunResult:
    """Run ``pkg`` as attempt ``epoch`` (the store's next); ``kwargs`` go to the request or the options."""
    options = {k: kwargs.pop(k) for k in list(kwargs) if k in ExecutionOptions.__dataclass_fields__}
    epoch = store.next_epoch(pkg.name, run_id) if store is not None else 1
    request = RunRequest(pkg, run_id, epoch=epoch, attempt=epoch, **kwargs)
    return execute(request, ExecutionOptions(store=store, **options))


def kill_in(task_id: str) -> None:
    """Make ``task_id`` die (:class:`Killed`) the next time it runs."""

    def die(ctx: TaskContext) -> None:
        raise Killed(task_id)

    T.HOOKS[task_id] = die
