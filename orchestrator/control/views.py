"""What the CLI's ``--json`` prints and the web UI's API serves: one builder per kind of row.

``status --json``, ``runs --json``, ``events --json``, ``logs --json`` and ``nodes --json`` and
the API's ``/api/runs/{run_id}``, ``/api/runs``, ``/api/runs/{run_id}/events``,
``/api/runs/{run_id}/logs`` and ``/api/nodes`` are built here, so both show the same fields
with the same meaning. Every value is plain JSON (timestamps as ISO 8601 strings in UTC).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from orchestrator.control.liveness import Liveness, node_ready
from orchestrator.errors import InvalidInput
from orchestrator.packages.flowcheck import HANDLER_SECTIONS
from orchestrator.state.models import Event, Run
from orchestrator.state.repository import Repository
from orchestrator.state.states import TaskState
from orchestrator.state.tasklogs import TaskLogs
from orchestrator.state.types import utcnow


def iso(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None


def duration_seconds(run: Run, now: datetime | None = None) -> float | None:
    """Seconds from the run's start to its end (to ``now`` while it runs); ``None`` before it starts."""
    if run.started_at is None:
        return None
    end = run.finished_at or now or utcnow()
    return round(max(0.0, (end - run.started_at).total_seconds()), 3)


def run_row(run: Run, now: datetime | None = None) -> dict[str, Any]:
    """One run as ``runs --json`` lists it."""
    return {
        "run_id": run.id,
        "package": run.package,
        "state": run.state.value,
        "attempt": run.attempt,
        "restarts": run.restarts,
        "node": run.node,
        "submitted_at": run.submitted_at.isoformat(),
        "started_at": iso(run.started_at),
        "finished_at": iso(run.finished_at),
        "duration_seconds": duration_seconds(run, now),
    }


def run_status(repository: Repository, run_id: str) -> dict[str, Any]:
    """The run as ``status --json`` prints it; every task of its package is listed, pending or not.

    Raises :class:`~orchestrator.errors.RunNotFound` for an unknown run id.
    """
    run = repository.run_row(run_id)
    tasks: dict[str, str] = {}
    definition: dict[str, Any] = {}
    if run.definition_hash:
        definition = repository.definition(run.package, run.definition_hash)
        tasks = {t["id"]: TaskState.PENDING.value for t in definition["tasks"]}
    tasks.update({task_id: row.state.value for task_id, row in repository.task_states(run_id).items()})
    handler_ids = {h["id"] for section in HANDLER_SECTIONS for h in definition.get(section) or []}
    handlers = {h: tasks.pop(h) for h in sorted(handler_ids) if h in tasks}
    return {
        "run_id": run.id,
        "package": run.package,
        "version": run.package_version,
        "state": run.state.value,
        "attempt": run.attempt,
        "epoch": run.epoch,
        "restarts": run.restarts,
        "max_restarts": run.max_restarts,
        "node": run.node,
        "tasks": tasks,
        "progress": repository.task_progress(run_id),
        "items": foreach_items(repository, run_id, definition.get("tasks") or []),
        "handlers": handlers,
        "flow": flow_of(definition),
        "error": run.error,
        "submitted_at": run.submitted_at.isoformat(),
        "started_at": iso(run.started_at),
        "finished_at": iso(run.finished_at),
    }


def plural(n: int, word: str) -> str:
    """``1 item``, ``1,200 items``."""
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def items_text(done: int, total: int | None, state: str | None) -> str:
    """A foreach's progress: "2 of 3 items" when the package lists its items (``total``), else
    "2 items so far" ("3 items" once it succeeded: an expression's count is known then)."""
    if total is not None:
        return f"{min(done, total)} of {plural(total, 'item')}"
    return plural(done, "item") + ("" if state == "succeeded" else " so far")


def foreach_items(
    repository: Repository, run_id: str, tasks: Sequence[Mapping[str, Any]]
) -> dict[str, dict[str, int | None]]:
    """Per foreach task: ``{done, total}``, the distinct items recorded done across attempts
    (counted in SQL) out of the items the package lists (``None`` for an expression)."""
    foreach = [task for task in tasks if task.get("foreach") is not None]
    if not foreach:
        return {}
    done = repository.items_done(run_id)
    return {task["id"]: {"done": done.get(task["id"], 0), "total": _listed(task)} for task in foreach}


def status_items(status: Mapping[str, Any]) -> dict[str, str]:
    """:func:`items_text` of each foreach task of a ``status --json`` object (``status`` prints it)."""
    states = status["tasks"]
    return {
        task_id: items_text(count["done"], count["total"], states.get(task_id))
        for task_id, count in (status.get("items") or {}).items()
    }


def _listed(task: Mapping[str, Any]) -> int | None:
    foreach = task.get("foreach")
    return len(foreach) if isinstance(foreach, list) else None


def flow_of(definition: dict[str, Any]) -> dict[str, Any]:
    """The control flow of the tasks that have more than plain success dependencies:
    ``{task: {depends_on: [{task, on}], mode, when}}`` (docs/control-flow.md)."""
    flow: dict[str, Any] = {}
    for task in definition.get("tasks") or []:
        entries = [
            e if isinstance(e, dict) else {"task": e, "on": "success"} for e in task.get("depends_on") or []
        ]
        mode, when = task.get("depends_on_mode", "all"), task.get("when")
        if all(e.get("on", "success") == "success" for e in entries) and mode == "all" and when is None:
            continue
        flow[task["id"]] = {"depends_on": entries, "mode": mode, "when": when}
    return flow


def event_row(event: Event) -> dict[str, Any]:
    """One entry of a run's timeline as ``events --json`` prints it."""
    return {
        "id": event.id,
        "at": event.at.isoformat(),
        "kind": event.kind,
        "node": event.node,
        "attempt": event.attempt,
        "detail": event.detail,
    }


def event_rows(repository: Repository, run_id: str) -> list[dict[str, Any]]:
    """The timeline of a run; :class:`~orchestrator.errors.RunNotFound` for an unknown run."""
    repository.run_row(run_id)
    return [event_row(e) for e in repository.events(run_id)]


def log_rows(
    repository: Repository,
    run_id: str,
    *,
    task: str | None = None,
    attempt: int | None = None,
    after: int | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """A run's task log lines as ``logs --json`` prints them, in order, each task's drop note first.

    ``after``: only the lines stored after that line ``id`` (what ``--follow`` polls).
    Raises :class:`~orchestrator.errors.RunNotFound` for an unknown run and
    :class:`~orchestrator.errors.InvalidInput` for a task its package does not have.
    """
    run = repository.run_row(run_id)
    if task is not None and run.definition_hash:
        definition = repository.definition(run.package, run.definition_hash)
        handlers = ("on_error", "on_success", "on_finish")
        tasks = {t["id"] for key in ("tasks", *handlers) for t in definition.get(key) or ()}
        if task not in tasks:
            raise InvalidInput(f"run {run_id!r} (package {run.package}) has no task {task!r}")
    lines = TaskLogs(repository.sessions).lines(run_id, task=task, attempt=attempt, after=after, limit=limit)
    return [line.as_dict() for line in lines]


def node_rows(repository: Repository, liveness: Liveness, lease_ttl: float) -> list[dict[str, Any]]:
    """Worker nodes as ``nodes --json`` lists them: alive ones from Redis, the others from SQL.

    ``ready`` says whether a live node's pool has started and reads the queues (a node
    announces itself alive first, while Celery still forks its pool processes).

    ``last_heartbeat`` of a live node is derived from its heartbeat deadline in Redis; of a
    node no longer alive it is the last time SQL saw it.
    """
    alive = liveness.alive_nodes()
    known = {n.name: n for n in repository.nodes()}
    running = repository.running_on()
    rows: list[dict[str, Any]] = []
    for name in sorted(set(alive) | set(known)):
        node = known.get(name)
        rows.append(
            {
                "node": name,
                "state": "alive" if name in alive else (node.state.value if node else "unknown"),
                "runs": running.get(name, []),
                "last_heartbeat": last_heartbeat(alive.get(name), lease_ttl)
                or (node.last_seen.isoformat() if node else None),
                "concurrency": alive.get(name, {}).get("concurrency") or (node.concurrency if node else None),
                # Alive and reading the queues (its pool forked); None for a node no longer alive.
                "ready": node_ready(alive[name]) if name in alive else None,
            }
        )
    return rows


def last_heartbeat(info: dict[str, Any] | None, ttl: float) -> str | None:
    """When a live node last renewed its heartbeat: its deadline less the lease TTL."""
    if not info or "deadline_ms" not in info:
        return None
    at = datetime.fromtimestamp(info["deadline_ms"] / 1000, UTC) - timedelta(seconds=ttl)
    return at.isoformat()
