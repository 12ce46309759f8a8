"""Serving the web UI with uvicorn on a socket bound beforehand (:mod:`orchestrator.ui.sockets`)."""

from __future__ import annotations

import contextlib
import ipaddress
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from types import FrameType

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


class _Server(uvicorn.Server):
    """Tells the UI's streams to end as soon as a stop is asked, so the shutdown is not held up."""

    def __init__(self, config: uvicorn.Config, ctx: UiContext) -> None:
        super().__init__(config)
        self.ctx = ctx

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.ctx.stopping.set()
        super().handle_exit(sig, frame)


@contextlib.contextmanager
def _stop_quietly() -> Iterator[None]:
    """While serving, uvicorn handles SIGINT and SIGTERM; it raises them again once it has stopped.

    They then find these handlers, which do nothing: a stop that was asked for ends the
    command normally (exit 0), without a KeyboardInterrupt or a death by signal.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


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
    server = _Server(config, ctx)
    if ready is not None:
        ready(address(sock))
    try:
        with _stop_quietly():
            server.run(sockets=[sock])
    finally:
        ctx.close()
        sock.close()
    if not server.started:
        raise ClusterUnavailable("the UI server did not start (see the log above)")
