"""Everything the run page shows about one run, read in a few short transactions.

Progress of a foreach task is the number of distinct items recorded done
(``item_done`` events, across attempts: items finished before a node loss are
skipped on resume, not done again) out of its items when the package lists them.
A foreach task is recorded running when its items are known (its items' starts
are not recorded one by one); a worker of an earlier version recorded it only
when it ended, so while its run is active a pending foreach task with items
done is still shown as running.

Progress of a copy task is the newest ``copy_progress`` event of the task, whose
detail carries ``rows`` and, when known, ``total``; a package without such
tasks shows none.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from markupsafe import Markup

from orchestrator.control.views import duration_seconds, event_row, items_text, plural, run_status
from orchestrator.state.models import Run, TaskRun
from orchestrator.state.states import RunState, TaskState
from orchestrator.state.tasklogs import LogLine, TaskLogs
from orchestrator.ui.context import UiContext
from orchestrator.ui.graph import GraphTask, render_svg
from orchestrator.ui.timeline import AttemptGroup, group_by_attempt


@dataclass(frozen=True)
class TaskLine:
    """One row of the run page's task table."""

    id: str
    state: str
    attempt: int | None
    tries: int | None
    seconds: float | None
    progress: str | None
    error: str | None


PAGE_LOG_LINES = 500
"""The run page shows a run's newest task log lines, at most this many (the API has them all)."""


@dataclass(frozen=True)
class LogPanel:
    """The log lines of one task (or foreach item) in one attempt, as the run page shows them."""

    task: str
    item: str | None
    attempt: int
    lines: list[LogLine]

    @property
    def title(self) -> str:
        return self.task + (f" [{self.item}]" if self.item is not None else "")


def log_panels(lines: Sequence[LogLine]) -> list[LogPanel]:
    """Lines grouped by attempt, task and item, in the order each group first logged."""
    panels: dict[tuple[int, str, str | None], LogPanel] = {}
    for line in lines:
        if line.attempt is None:
            continue  # a note: shown above the panels
        item = None if line.item is None else str(line.item)
        key = (line.attempt, line.task, item)
        if key not in panels:
            panels[key] = LogPanel(line.task, item, line.attempt, [])
        panels[key].lines.append(line)
    return list(panels.values())


@dataclass(frozen=True)
class RunDetail:
    """The run page's content."""

    status: dict[str, Any]
    duration: float | None
    graph: Markup
    tasks: list[TaskLine]
    timeline: list[AttemptGroup]
    last_event_id: int
    can_cancel: bool
    can_resume: bool
    logs: list[LogPanel]
    log_notes: list[str]
    logs_cut: bool  # more lines than the page shows


def progress_texts(
    definition: Sequence[Mapping[str, Any]],
    events: Sequence[Mapping[str, Any]],
    states: Mapping[str, str],
    items: Mapping[str, Mapping[str, Any]],
) -> dict[str, str]:
    """Per task id: foreach progress ("2 of 3 items", from ``items``: the ``items`` of
    ``status --json``, counted in SQL) or copy progress ("1,200 of 5,000 rows", from the
    latest ``copy_progress`` event)."""
    copies: dict[str, Mapping[str, Any]] = {}
    for event in events:
        detail = event.get("detail") or {}
        if event["kind"] == "copy_progress":
            copies[str(detail.get("task"))] = detail
    found: dict[str, str] = {}
    for task in definition:
        task_id = task["id"]
        count = items.get(task_id)
        if count is not None:
            found[task_id] = items_text(count["done"], count["total"], states.get(task_id))
        copy = copies.get(task_id)
        if copy is not None and isinstance(copy.get("rows"), int):
            total = copy.get("total")
            rows = (
                f"{copy['rows']:,} of {plural(total, 'row')}"
                if isinstance(total, int)
                else plural(copy["rows"], "row")
            )
            found[task_id] = rows
    return found


def _task_lines(
    definition: Sequence[Mapping[str, Any]],
    rows: Mapping[str, TaskRun],
    states: Mapping[str, str],
    progress: Mapping[str, str],
) -> list[TaskLine]:
    order = [t["id"] for t in definition] + sorted(set(rows) - {t["id"] for t in definition})
    lines = []
    for task_id in order:
        row = rows.get(task_id)
        lines.append(
            TaskLine(
                id=task_id,
                state=states.get(task_id, TaskState.PENDING.value),
                attempt=row.attempt if row else None,
                tries=row.tries if row else None,
                seconds=row.duration_seconds if row else None,
                progress=progress.get(task_id),
                error=row.error if row else None,
            )
        )
    return lines


def dependencies(task: Mapping[str, Any]) -> list[str]:
    """The ids a task depends on: plain ids, or ``{task: id, on: ...}`` entries."""
    found = []
    for entry in task.get("depends_on") or []:
        target = entry.get("task") if isinstance(entry, Mapping) else entry
        if isinstance(target, str):
            found.append(target)
    return found


def edge_kinds(task: Mapping[str, Any]) -> dict[str, str]:
    """The dependencies of a task on a failure or completion constraint, with their kind."""
    return {
        entry["task"]: str(entry.get("on"))
        for entry in task.get("depends_on") or []
        if isinstance(entry, Mapping) and entry.get("on") in ("failure", "completion")
    }


def shown_states(
    definition: Sequence[Mapping[str, Any]], status: Mapping[str, Any], events: Sequence[Mapping[str, Any]]
) -> dict[str, str]:
    """Task states as the page shows them: the recorded ones, a foreach under way as running."""
    states: dict[str, str] = dict(status["tasks"])
    if RunState(status["state"]).finished:
        return states
    started = {str((e.get("detail") or {}).get("task")) for e in events if e["kind"] == "item_done"}
    for task in definition:
        task_id = task["id"]
        if task.get("foreach") is not None and task_id in started and states.get(task_id) == "pending":
            states[task_id] = TaskState.RUNNING.value
    return states


def run_detail(ctx: UiContext, run_id: str) -> RunDetail:
    """The run page of ``run_id``; :class:`~orchestrator.errors.RunNotFound` if there is no such run."""
    reader = ctx.reader
    status = run_status(reader, run_id)
    run: Run = reader.run_row(run_id)
    definition: list[dict[str, Any]] = []
    if run.definition_hash:
        definition = reader.definition(run.package, run.definition_hash)["tasks"]
    events = [event_row(e) for e in reader.events(run_id)]
    states = shown_states(definition, status, events)
    progress = progress_texts(definition, events, states, status["items"])
    graph = render_svg(
        [
            GraphTask(
                t["id"], dependencies(t), states.get(t["id"], "pending"), progress.get(t["id"]), edge_kinds(t)
            )
            for t in definition
        ]
    )
    state = RunState(status["state"])
    lines = TaskLogs(reader.sessions).lines(run_id, limit=PAGE_LOG_LINES)
    notes = [line.message for line in lines if line.attempt is None]
    return RunDetail(
        status=status,
        duration=duration_seconds(run),
        graph=graph,
        tasks=_task_lines(definition, reader.task_states(run_id), states, progress),
        timeline=group_by_attempt(reader.attempts(run_id), events),
        last_event_id=max((e["id"] for e in events), default=0),
        can_cancel=not state.finished,
        can_resume=state in (RunState.FAILED, RunState.CANCELLED) and bool(run.definition_hash),
        logs=log_panels(lines),
        log_notes=notes,
        logs_cut=len(lines) - len(notes) >= PAGE_LOG_LINES,
    )
