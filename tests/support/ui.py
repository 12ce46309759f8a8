"""The web UI in tests: a run history written through the repository, the app under a test client,
and the real ``orchestrator ui`` process for browser tests."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import insert

from orchestrator.packages.model import Package
from orchestrator.packages.validation import parse_package
from orchestrator.runtime.services import Services
from orchestrator.state.models import Run
from orchestrator.state.repository import Completion, Repository
from orchestrator.state.states import RunState, TaskState
from orchestrator.ui.app import create_app
from orchestrator.ui.context import UiContext
from tests.support.cli import wait_until
from tests.support.processes import ProcessCluster

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


def seed_recovery(repo: Repository, run_id: str, *, error: str | None = None, finish: bool = True) -> None:
    """A run whose node was lost after one item: attempt 1 on node-2, attempt 2 resumed on node-3.

    With ``finish``, attempt 2 ends: succeeded, or failed with ``error`` (from the report task).
    Without, the run is left running (attempt 2, epoch 2) with load_partition in progress.
    """
    package = etl_package()
    repo.register_package(package)
    repo.create_run(run_id, package, {}, max_restarts=5)
    repo.record_dispatch(run_id, 1)
    repo.mark_claimed(run_id, 1, 1, "node-2")
    for task in ("prepare", "generate"):
        repo.task_started(run_id, 1, 1, task, 1)
        repo.record_completion(run_id, 1, 1, "node-2", Completion(task, None, 0.02), 900)
    repo.task_started(run_id, 1, 1, "load_partition", 1)
    repo.record_completion(run_id, 1, 1, "node-2", Completion("load_partition", "eu", 1.2), 1200)
    repo.record_lost(run_id, 1, 2, "node-2", reason="node_lost")
    repo.record_dispatch(run_id, 2, reason="node_lost")
    repo.mark_claimed(run_id, 2, 2, "node-3")
    repo.record_resumed(run_id, 2, 2, "node-3", ["prepare", "generate"])
    repo.task_started(run_id, 2, 2, "load_partition", 1)
    repo.record_completion(run_id, 2, 2, "node-3", Completion("load_partition", "us", 1.1), 1300)
    if not finish:
        return
    repo.record_completion(run_id, 2, 2, "node-3", Completion("load_partition", "apac", 1.1), 1400)
    repo.task_finished(run_id, 2, 2, "node-3", "load_partition", TaskState.SUCCEEDED, 3.3, None)
    repo.task_started(run_id, 2, 2, "report", 1)
    state = TaskState.FAILED if error else TaskState.SUCCEEDED
    repo.task_finished(run_id, 2, 2, "node-3", "report", state, 0.1, error)
    outcome = RunState.FAILED if error else RunState.SUCCEEDED
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
