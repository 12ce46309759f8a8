"""The web UI's ASGI application: pages, API, static files, error pages and security headers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import redis
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from checkpoints import InvalidIdentifier
from orchestrator.errors import ClusterUnavailable, InvalidInput, RunNotFound, RunStateConflict
from orchestrator.ui import api, pages
from orchestrator.ui.context import UiContext
from orchestrator.ui.render import STATIC, VERSION, render
from orchestrator.ui.security import SECURITY_HEADERS, Refused

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


class SecurityHeaders:
    """Adds :data:`~orchestrator.ui.security.SECURITY_HEADERS` to every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.headers = [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in self.headers if k not in present]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, with_headers)


def _refusal(request: Request, status: int, message: str) -> Response:
    if request.url.path.startswith("/api/"):
        return JSONResponse({"detail": message}, status_code=status)
    return render(request, "error.html", {"status": status, "message": message}, status=status)


async def _refused(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Refused)
    return _refusal(request, exc.status, exc.message)


def _handler(status: int, prefix: str = "") -> Callable[[Request, Exception], Awaitable[Response]]:
    async def handle(request: Request, exc: Exception) -> Response:
        return _refusal(request, status, f"{prefix}{exc}")

    return handle


def create_app(ctx: UiContext, *, allowed_hosts: Sequence[str] | None = None) -> FastAPI:
    """The UI serving ``ctx``. ``allowed_hosts`` limits the ``Host`` header (DNS rebinding)."""
    app = FastAPI(
        title="checkpoint orchestrator",
        version=VERSION,
        description="Runs, their recovery timeline and worker nodes; the same rows as the CLI's --json.",
        docs_url=None,  # the interactive docs load scripts from a CDN: not offline, not here
        redoc_url=None,
        openapi_url="/api/openapi.json",
    )
    app.state.ctx = ctx
    app.include_router(api.router)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_exception_handler(Refused, _refused)
    app.add_exception_handler(RunNotFound, _handler(404))
    app.add_exception_handler(RunStateConflict, _handler(409))
    app.add_exception_handler(InvalidInput, _handler(400))
    app.add_exception_handler(InvalidIdentifier, _handler(400))
    app.add_exception_handler(ClusterUnavailable, _handler(503))
    app.add_exception_handler(redis.RedisError, _handler(503, "cannot reach the broker: "))
    app.add_middleware(SecurityHeaders)
    if allowed_hosts:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))
    return app
