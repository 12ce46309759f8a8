"""The Jinja2 templates of the pages, their filters, and the page context every template gets.

Autoescaping is on for every template: whatever a package, a task or an error
says is shown as text. Times are shown in UTC, as the CLI shows them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from starlette.templating import Jinja2Templates

from orchestrator.ui.context import UiContext

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"


def _version() -> str:
    try:
        return version("checkpoint-orchestrator")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "dev"


VERSION = _version()


def _parse(iso: str | None) -> datetime | None:
    return datetime.fromisoformat(iso) if iso else None


def when(iso: str | None) -> str:
    """``2026-11-26 12:14:33`` (UTC), ``-`` for none."""
    at = _parse(iso)
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if at else "-"


def clock(iso: str | None) -> str:
    """``12:14:33.130`` (UTC), ``-`` for none."""
    at = _parse(iso)
    return at.astimezone(UTC).strftime("%H:%M:%S.%f")[:12] if at else "-"


def seconds(value: float | None) -> str:
    """A duration for people: ``0.42 s``, ``12.3 s``, ``4 min 02 s``, ``2 h 03 min``."""
    if value is None:
        return "-"
    if value < 10:
        return f"{value:.2f} s"
    if value < 60:
        return f"{value:.1f} s"
    minutes, secs = divmod(int(value), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def age(iso: str | None) -> str:
    """How long ago, ``-`` for none."""
    at = _parse(iso)
    if at is None:
        return "-"
    return seconds(max(0.0, (datetime.now(UTC) - at).total_seconds())) + " ago"


def static(name: str) -> str:
    return f"/static/{name}?v={VERSION}"


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(when=when, clock=clock, seconds=seconds, age=age)
    env.globals.update(static=static, version=VERSION)
    return env


templates = Jinja2Templates(env=_environment())


def render(request: Request, name: str, context: dict[str, Any], *, status: int = 200) -> HTMLResponse:
    """``name`` rendered with ``context`` and what every page needs (the guard, the session, CSRF)."""
    ctx: UiContext = request.app.state.ctx
    session = ctx.guard.session(request)
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    base = {
        "guard": ctx.guard,
        "logged_in": session is not None,
        "csrf": ctx.guard.csrf_token(session),
        "here": here,
    }
    return templates.TemplateResponse(request, name, {**base, **context}, status_code=status)
