"""The web UI in tests: a run history written as the cluster writes it, the app under a test client,
and the real ``orchestrator ui`` process for browser tests."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import insert

from orchestrator.control.stream import Appended
from orchestrator.packages.model import Package
from orchestrator.packages.validation import parse_package
from orchestrator.runtime.services import Services
from orchestrator.state.models import Run
from orchestrator.state.projection import write_records
from orchestrator.state.records import Record
from orchestrator.state.repository import Repository
from orchestrator.state.states import RunState, TaskState
from orchestrator.ui.app import create_app
from orchestrator.ui.context import UiContext
from tests.support.cli import wait_until
from tests.support.processes import ProcessCluster
from workers.executor import RunResult
from workers.reporter import AttemptReporter

ADDRESS = re.compile(r"web UI at (http://\S+/)")


def etl_package(name: str = "orders_nightly") -> Package:
    """prepare -> generate -> load_partition (foreach eu, us, apac) -> report (also after prepare)."""
    return parse_package(
        {
            "name": name,
            "tasks": [
                {"id": "prepare", "python": "examples.orders:prepare"},
                {"id": "generate", "python": "examples.orders:generate", "depends_on": ["prepare"]},
                {
                    "id": "load_partition",
                    "python": "examples.orders:load_partition",
                    "foreach": ["eu", "us", "apac"],
                    "depends_on": ["generate"],
                },
                {"id": "report", "shell": "echo done", "depends_on": ["load_partition", "prepare"]},
            ],
        }
    )


class SqlStream:
    """An event stream that writes what an attempt appends to SQL at once: the schedulers'
    projection without Redis, so a test's history is made of the records workers send."""

    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self.appended = 0

    def append(self, run_id: str, epoch: int, records: list[str]) -> Appended:
        with self.repo.sessions.begin() as session:
            write_records(session, [Record.decode(raw) for raw in records])
        ids = [f"{self.appended + n + 1}-0" for n in range(len(records))]
        self.appended += len(records)
        return Appended(ids, ids[-1])


def attempt_reporter(repo: Repository, run_id: str, epoch: int, node: str) -> AttemptReporter:
    """The hooks of attempt ``epoch`` (attempt number = epoch) on ``node``, writing to SQL."""
    return AttemptReporter(SqlStream(repo), run_id, epoch, epoch, node)  # type: ignore[arg-type]


def _done(reporter: AttemptReporter, task: str, item: Any, seconds: float, size: int) -> None:
    reporter.task_finished(task, item, TaskState.SUCCEEDED, seconds, None)
    reporter.checkpoint_saved(size, 0.001, "item" if item is not None else "task")
    reporter.flush()  # now, not a few ms later from the flusher: the history is made in order


def seed_recovery(repo: Repository, run_id: str, *, error: str | None = None, finish: bool = True) -> None:
    """A run whose node was lost after one item: attempt 1 on node-2, attempt 2 resumed on node-3.

    With ``finish``, attempt 2 ends: succeeded, or failed with ``error`` (from the report task).
    Without, the run is left running (attempt 2, epoch 2) with load_partition in progress.
    """
    package = etl_package()
    repo.register_package(package)
    repo.create_run(run_id, package, {}, max_restarts=5, epoch=1)
    repo.mark_claimed(run_id, 1, 1, "node-2")
    first = attempt_reporter(repo, run_id, 1, "node-2")
    for task in ("prepare", "generate"):
        first.task_started(task, None, 1)
        _done(first, task, None, 0.02, 900)
    first.task_started("load_partition", None, 1)
    _done(first, "load_partition", "eu", 1.2, 1200)
    repo.record_lost(run_id, 1, 2, "node-2", reason="node_lost")
    repo.record_dispatch(run_id, 2, reason="node_lost")
    repo.mark_claimed(run_id, 2, 2, "node-3")
    second = attempt_reporter(repo, run_id, 2, "node-3")
    second.run_started(run_id, True, ["prepare", "generate"])
    second.task_started("load_partition", None, 1)
    _done(second, "load_partition", "us", 1.1, 1300)
    if not finish:
        return
    _done(second, "load_partition", "apac", 1.1, 1400)
    _done(second, "load_partition", None, 3.3, 1500)
    second.task_started("report", None, 1)
    state = TaskState.FAILED if error else TaskState.SUCCEEDED
    second.task_finished("report", None, state, 0.1, error)
    outcome = RunState.FAILED if error else RunState.SUCCEEDED
    tasks = {"prepare": TaskState.SUCCEEDED, "generate": TaskState.SUCCEEDED, "report": state}
    tasks["load_partition"] = TaskState.SUCCEEDED
    second.run_finished(
        RunResult(run_id, "orders_nightly", outcome, tasks, error and f"task report failed: {error}")
    )
    repo.finish_attempt(
        run_id, 2, 2, "node-3", outcome, error and f"task report failed: {error}", {"report": state}
    )


def insert_runs(
    repo: Repository, count: int, *, start: datetime | None = None, batch: int = 5000
) -> datetime:
    """``count`` finished runs, one second apart (newest last), packages and states in turn; return the start."""
    start = start or datetime(2026, 1, 1, tzinfo=UTC)
    states = [RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED, RunState.SUCCEEDED]
    rows: list[dict[str, Any]] = []
    for n in range(count):
        at = start + timedelta(seconds=n)
        rows.append(
            {
                "id": f"bulk-{n:07d}",
                "package": ("alpha", "beta", "gamma")[n % 3],
                "definition_hash": "0" * 64,
                "state": states[n % 4],
                "attempt": 1,
                "epoch": 1,
                "restarts": n % 2,
                "max_restarts": 5,
                "node": f"node-{n % 3 + 1}",
                "variables": {},
                "submitted_at": at,
                "started_at": at + timedelta(milliseconds=100),
                "finished_at": at + timedelta(seconds=30),
                "updated_at": at + timedelta(seconds=30),
                "cancel_requested": False,
            }
        )
    with repo.sessions.begin() as session:
        for first in range(0, len(rows), batch):
            session.execute(insert(Run), rows[first : first + batch])
    return start


def ui_client(services: Services, *, read_only: bool = False, **options: Any) -> Iterator[TestClient]:
    """The UI app on ``services`` under a test client; closed (and its reader disposed) after."""
    ctx = UiContext.open(services, read_only=read_only)
    try:
        with TestClient(create_app(ctx, **options)) as client:
            yield client
    finally:
        ctx.reader.engine.dispose()


def start_ui(cluster: ProcessCluster, *args: str, name: str = "ui") -> str:
    """``orchestrator ui`` as a process of ``cluster`` on a free port; its address once it answers."""
    cluster.spawn(name, ["ui", "--port", "0", *args])
    log = cluster.log_dir / f"{name}.log"

    def address() -> str | None:
        found = ADDRESS.search(log.read_text(errors="replace")) if log.exists() else None
        return found[1] if found else None

    return wait_until(address, timeout=60, what=f"the UI to print its address\n{cluster.tail()}")
