"""The HTML pages: runs, one run, nodes, and the login that unlocks cancel and resume.

Every page is rendered on the server (Jinja2, autoescaped: a value from a package or an
error is text, never markup). ``?partial=1`` renders only the part of a page that changes,
which the page's script fetches when the live stream says something changed.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from orchestrator.control.views import node_rows, run_row
from orchestrator.state.states import RunState
from orchestrator.ui.context import UiContext
from orchestrator.ui.detail import run_detail
from orchestrator.ui.query import RunQuery
from orchestrator.ui.render import render
from orchestrator.ui.security import CSRF_FIELD, SESSION_COOKIE, SESSION_SECONDS, Refused, safe_next

router = APIRouter(include_in_schema=False)
MAX_FORM_BYTES = 4096


def _ctx(request: Request) -> UiContext:
    ctx: UiContext = request.app.state.ctx
    return ctx


def _partial(request: Request) -> bool:
    return request.query_params.get("partial") == "1"


@router.get("/", response_class=HTMLResponse)
def runs_page(request: Request) -> Response:
    query = RunQuery.parse(request.query_params)
    listing = _ctx(request).listing
    page = listing.page(query.filter, limit=query.limit, before=query.before, after=query.after)
    context: dict[str, Any] = {
        "q": query,
        "runs": [run_row(r) for r in page.runs],
        "total": listing.count(query.filter),
        "older": query.link(before=page.older) if page.older else None,
        "newer": query.link(after=page.newer) if page.newer else None,
        "first": query.link() if (query.before or query.after) else None,
        "states": [s.value for s in RunState],
        "stream": "/api/stream",
    }
    return render(request, "_runs_table.html" if _partial(request) else "runs.html", context)


@router.get("/runs/{run_id}", response_class=HTMLResponse)
def run_page(request: Request, run_id: str) -> Response:
    detail = run_detail(_ctx(request), run_id)
    context = {"d": detail, "s": detail.status, "run_id": run_id}
    return render(request, "_run_live.html" if _partial(request) else "run.html", context)


@router.get("/nodes", response_class=HTMLResponse)
def nodes_page(request: Request) -> Response:
    ctx = _ctx(request)
    rows = node_rows(ctx.reader, ctx.services.liveness, ctx.lease_ttl)
    return render(request, "_nodes_table.html" if _partial(request) else "nodes.html", {"nodes": rows})


async def _form(request: Request) -> dict[str, str]:
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise Refused(413, "form too large")
    fields = parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True)
    return {k: v[0] for k, v in fields.items()}


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next: str = "/") -> Response:
    return render(request, "login.html", {"next": safe_next(next), "message": None})


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request) -> Response:
    guard = _ctx(request).guard
    guard.require_same_origin(request)
    form = await _form(request)
    target = safe_next(form.get("next"))
    if not guard.actions_enabled:
        raise Refused(403, "actions are disabled: set ORCHESTRATOR_UI_TOKEN (and do not use --read-only)")
    if not guard.token_matches(form.get("token")):
        context = {"next": target, "message": "wrong token"}
        return render(request, "login.html", context, status=401)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        guard.new_session(),
        max_age=SESSION_SECONDS,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    _ctx(request).guard.require_same_origin(request)
    response = RedirectResponse("/", status_code=303)
    response.delete_cookie(SESSION_COOKIE, httponly=True, samesite="strict")
    return response


@router.post("/runs/{run_id}/{action}")
async def act(request: Request, run_id: str, action: str) -> Response:
    """Cancel or resume from the run page's forms (session cookie and CSRF token)."""
    if action not in ("cancel", "resume"):
        raise Refused(404, f"no action {action[:20]!r}")
    ctx = _ctx(request)
    form = await _form(request)
    ctx.guard.authorize(request, form.get(CSRF_FIELD))
    client = ctx.client
    await run_in_threadpool(client.cancel if action == "cancel" else client.resume, run_id)
    return RedirectResponse(f"/runs/{run_id}", status_code=303)
