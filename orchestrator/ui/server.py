"""Serving the web UI with uvicorn on a socket bound beforehand (:mod:`orchestrator.ui.sockets`)."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable

import uvicorn

from orchestrator.errors import ClusterUnavailable
from orchestrator.runtime.services import Services
from orchestrator.ui.app import LOOPBACK_HOSTS, create_app
from orchestrator.ui.context import UiContext
from orchestrator.ui.sockets import address

SHUTDOWN_GRACE = 3  # seconds open streams get to end when the UI stops


def allowed_hosts(host: str) -> list[str] | None:
    """Host names the UI answers to: on a loopback address only local names (no DNS rebinding)."""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    return list(LOOPBACK_HOSTS) if loopback else None


def serve(
    services: Services,
    sock: socket.socket,
    *,
    read_only: bool = False,
    ready: Callable[[str], None] | None = None,
) -> None:
    """Serve the UI on ``sock`` until SIGINT or SIGTERM; ``ready`` is told the address first."""
    ctx = UiContext.open(services, read_only=read_only)
    host = sock.getsockname()[0]
    app = create_app(ctx, allowed_hosts=allowed_hosts(host))
    config = uvicorn.Config(
        app,
        log_config=None,  # the orchestrator's logging, set up by the CLI
        access_log=False,
        timeout_graceful_shutdown=SHUTDOWN_GRACE,
        lifespan="off",
    )
    server = uvicorn.Server(config)
    if ready is not None:
        ready(address(sock))
    try:
        server.run(sockets=[sock])
    finally:
        ctx.close()
        sock.close()
    if not server.started:
        raise ClusterUnavailable("the UI server did not start (see the log above)")
