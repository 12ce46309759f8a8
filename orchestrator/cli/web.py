"""``orchestrator ui``: serve the web UI (runs, recovery timelines, the package graph, nodes; live)."""

from __future__ import annotations

import ipaddress
import socket
from typing import Annotated

import typer

from orchestrator.cli.app import app, err, exit_codes, out
from orchestrator.runtime.services import Services
from orchestrator.runtime.settings import get_settings
from orchestrator.ui.sockets import DEFAULT_PORT, bind


def _mode(read_only: bool, token_set: bool) -> str:
    if read_only:
        return "read-only"
    if token_set:
        return "cancel and resume for whoever logs in with ORCHESTRATOR_UI_TOKEN"
    return "view only: set ORCHESTRATOR_UI_TOKEN to allow cancel and resume"


def _public(host: str) -> bool:
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host != "localhost"


@app.command()
def ui(
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port to listen on.")] = DEFAULT_PORT,
    read_only: Annotated[bool, typer.Option("--read-only", help="Never cancel or resume.")] = False,
    fd: Annotated[int | None, typer.Option("--fd", hidden=True, help="Serve this bound socket.")] = None,
) -> None:
    """Serve the web UI: runs, their recovery timeline and package graph, nodes, live; a JSON API."""
    from orchestrator.ui.server import serve  # the web framework loads only for this command

    settings = get_settings()
    with exit_codes():
        sock = socket.socket(fileno=fd) if fd is not None else bind(host, port)
        if _public(sock.getsockname()[0]):
            err.print("[yellow]the UI listens beyond this machine: whoever reaches it can see every run[/]")

        def ready(url: str) -> None:
            mode = _mode(read_only, settings.ui_secret() is not None)
            out.print(f"web UI at {url} ({mode}); Ctrl-C stops it", soft_wrap=True)

        serve(Services(settings), sock, read_only=read_only, ready=ready)
