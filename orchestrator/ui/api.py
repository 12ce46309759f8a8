"""The JSON API: the CLI's ``--json`` views over HTTP, the live stream, and the two actions.

Rows come from :mod:`orchestrator.control.views`, the builders the CLI prints, so
``/api/runs/{run_id}`` is ``status --json``, the rows of ``/api/runs`` are those of
``runs --json``, ``/api/runs/{run_id}/events`` is ``events --json``, ``/api/runs/{run_id}/logs`` is
``logs --json`` and ``/api/nodes`` is ``nodes --json``. The models below only describe
them for the OpenAPI document (``/api/openapi.json``). Timestamps are ISO 8601 strings in UTC.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from orchestrator.control.views import event_rows, log_rows, node_rows, run_row, run_status
from orchestrator.state.states import RunState
from orchestrator.state.tasklogs import MAX_LINES as MAX_LOG_LINES
from orchestrator.ui.context import UiContext
from orchestrator.ui.query import RunQuery
from orchestrator.ui.security import CSRF_HEADER
from orchestrator.ui.stream import STREAM_SECONDS, Feed, changes, start_id

router = APIRouter(prefix="/api", tags=["api"])
ISO = "ISO 8601 timestamp, UTC"


class RunRow(BaseModel):
    """One run, as ``orchestrator runs --json`` lists it."""

    run_id: str
    package: str
    state: RunState
    attempt: int
    restarts: int
    node: str | None
    submitted_at: str = Field(description=ISO)
    started_at: str | None = Field(description=ISO)
    finished_at: str | None = Field(description=ISO)
    duration_seconds: float | None = Field(description="from start to end, or to now while it runs")


class RunList(BaseModel):
    """A page of runs, newest first; pass ``older`` as ``before`` (or ``newer`` as ``after``) for the next."""

    runs: list[RunRow]
    total: int = Field(description="runs matching the filters, on every page")
    older: str | None = Field(description="cursor of the next (older) page, if any")
    newer: str | None = Field(description="cursor of the previous (newer) page, if any")


class ItemCount(BaseModel):
    """A foreach task's items: done so far, and how many the package lists."""

    done: int
    total: int | None


class RunStatus(BaseModel):
    """One run, as ``orchestrator status --json`` prints it."""

    run_id: str
    package: str
    version: int | None = Field(description="the catalog version that runs; null for an inline package")
    state: RunState
    attempt: int
    epoch: int
    restarts: int
    max_restarts: int
    node: str | None
    tasks: dict[str, str] = Field(description="task id to its state")
    progress: dict[str, Any] = Field(
        default_factory=dict,
        description="copy task id to its progress: {rows, rows_per_second} (docs/etl.md)",
    )
    items: dict[str, ItemCount] = Field(
        default_factory=dict,
        description="foreach task id to its distinct items done across attempts, out of the items "
        "the package lists (total null for an expression)",
    )
    handlers: dict[str, str] = Field(description="event handler id to the state of its last run")
    flow: dict[str, Any] = Field(
        description="tasks with failure/completion constraints, depends_on_mode any or a condition: "
        "{task: {depends_on: [{task, on}], mode, when}} (docs/control-flow.md)"
    )
    error: str | None
    submitted_at: str = Field(description=ISO)
    started_at: str | None = Field(description=ISO)
    finished_at: str | None = Field(description=ISO)


class EventRow(BaseModel):
    """One entry of a run's timeline, as ``orchestrator events --json`` prints it."""

    id: int
    at: str = Field(description=ISO)
    kind: str
    node: str | None
    attempt: int | None
    detail: dict[str, Any]


class LogRow(BaseModel):
    """One line a task logged, as ``orchestrator logs --json`` prints it (masked, as text)."""

    id: int | None = Field(description="null for a note that older lines were dropped")
    at: str | None = Field(description=ISO)
    task: str
    item: Any = Field(description="the foreach item, else null")
    attempt: int | None
    try_: int | None = Field(alias="try", description="the task-level try within the attempt")
    level: str = Field(description="debug, info, warning, error, critical, or note")
    message: str


class NodeRow(BaseModel):
    """One worker node, as ``orchestrator nodes --json`` lists it."""

    node: str
    state: str = Field(description="alive, lost, stopped or unknown")
    runs: list[str]
    last_heartbeat: str | None = Field(description=ISO)
    concurrency: int | None
    ready: bool | None = Field(
        description="alive and reading the queues (its pool started); null for a node not alive"
    )


class Requested(BaseModel):
    run_id: str
    requested: str


def _ctx(request: Request) -> UiContext:
    ctx: UiContext = request.app.state.ctx
    return ctx


@router.get("/runs", response_model=RunList)
def list_runs(
    request: Request,
    state: Annotated[str | None, Query(description="only runs in this state")] = None,
    package: Annotated[str | None, Query(description="only runs of this package")] = None,
    since: Annotated[str | None, Query(description="submitted at or after (ISO 8601; no zone: UTC)")] = None,
    until: Annotated[str | None, Query(description="submitted before (ISO 8601; no zone: UTC)")] = None,
    before: Annotated[str | None, Query(description="cursor: the page older than it")] = None,
    after: Annotated[str | None, Query(description="cursor: the page newer than it")] = None,
    limit: Annotated[str | None, Query(description="runs per page, 1 to 500 (default 50)")] = None,
) -> dict[str, Any]:
    query = RunQuery.of(
        state=state, package=package, since=since, until=until, before=before, after=after, limit=limit
    )
    listing = _ctx(request).listing
    page = listing.page(query.filter, limit=query.limit, before=query.before, after=query.after)
    return {
        "runs": [run_row(r) for r in page.runs],
        "total": listing.count(query.filter),
        "older": str(page.older) if page.older else None,
        "newer": str(page.newer) if page.newer else None,
    }


@router.get("/runs/{run_id}", response_model=RunStatus)
def get_run(request: Request, run_id: str) -> dict[str, Any]:
    return run_status(_ctx(request).reader, run_id)


@router.get("/runs/{run_id}/events", response_model=list[EventRow])
def get_events(request: Request, run_id: str) -> list[dict[str, Any]]:
    return event_rows(_ctx(request).reader, run_id)


@router.get("/runs/{run_id}/logs", response_model=list[LogRow], response_model_by_alias=True)
def get_logs(
    request: Request,
    run_id: str,
    task: Annotated[str | None, Query(description="only this task's lines")] = None,
    attempt: Annotated[int | None, Query(ge=1, description="only this attempt's lines")] = None,
    after: Annotated[int | None, Query(ge=0, description="only lines stored after this line id")] = None,
    limit: Annotated[int | None, Query(ge=1, le=MAX_LOG_LINES, description="the newest lines only")] = None,
) -> list[dict[str, Any]]:
    """The run's task log lines in order, each task's note of dropped lines first."""
    return log_rows(_ctx(request).reader, run_id, task=task, attempt=attempt, after=after, limit=limit)


@router.get("/nodes", response_model=list[NodeRow])
def get_nodes(request: Request) -> list[dict[str, Any]]:
    ctx = _ctx(request)
    return node_rows(ctx.reader, ctx.services.liveness, ctx.lease_ttl)


@router.get(
    "/stream",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "server-sent events"}},
)
async def stream(
    request: Request,
    run_id: Annotated[str | None, Query(description="only this run's changes")] = None,
    after: Annotated[int | None, Query(ge=0, description="send events with a higher id")] = None,
    seconds: Annotated[
        float, Query(gt=0, le=STREAM_SECONDS, description="end the stream after")
    ] = STREAM_SECONDS,
    last_event_id: Annotated[str | None, Header()] = None,
) -> StreamingResponse:
    """Server-sent events: ``run-event``, ``run-state`` and ``nodes`` (see :mod:`orchestrator.ui.stream`)."""
    ctx = _ctx(request)
    first = await run_in_threadpool(start_id, ctx, after, last_event_id)
    feed = Feed(ctx, run_id, first)
    return StreamingResponse(
        changes(request, feed, seconds),
        media_type="text/event-stream",
        headers={"x-accel-buffering": "no"},
    )


@router.post("/runs/{run_id}/cancel", response_model=RunStatus)
def cancel_run(
    request: Request, run_id: str, x_csrf_token: Annotated[str | None, Header(alias=CSRF_HEADER)] = None
) -> dict[str, Any]:
    """Cancel the run (``Authorization: Bearer <ORCHESTRATOR_UI_TOKEN>``); its checkpoint is kept."""
    ctx = _ctx(request)
    ctx.guard.authorize(request, x_csrf_token)
    return ctx.client.cancel(run_id)


@router.post("/runs/{run_id}/resume", response_model=Requested)
def resume_run(
    request: Request, run_id: str, x_csrf_token: Annotated[str | None, Header(alias=CSRF_HEADER)] = None
) -> dict[str, Any]:
    """Resume a failed or cancelled run from its checkpoint (same authorisation as cancel)."""
    ctx = _ctx(request)
    ctx.guard.authorize(request, x_csrf_token)
    ctx.client.resume(run_id)
    return {"run_id": run_id, "requested": "resume"}
