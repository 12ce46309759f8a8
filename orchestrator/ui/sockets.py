"""The UI's listening socket, bound before the server starts so that a taken port is a clear error.

``orchestrator ui`` binds the port it is given and fails if it is taken;
``orchestrator up`` and ``orchestrator demo`` bind the default port, or any free
one when it is taken, and hand the bound socket to the UI process (``--fd``), so
no other process can take the port between the choice and the use. This module
is light on purpose: the CLI imports it without loading the web framework.
"""

from __future__ import annotations

import errno
import socket

from orchestrator.errors import ClusterUnavailable

DEFAULT_PORT = 8808


def bind(host: str, port: int, *, fallback: bool = False) -> socket.socket:
    """A listening socket on ``host:port``; with ``fallback``, on a free port if that one is taken.

    Raises :class:`~orchestrator.errors.ClusterUnavailable` when the port is taken (without
    ``fallback``) or the address cannot be used.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for candidate in (port, 0) if fallback else (port,):
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, candidate))
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE and candidate != 0 and fallback:
                continue
            reason = "is in use; choose another with --port" if exc.errno == errno.EADDRINUSE else str(exc)
            raise ClusterUnavailable(f"cannot serve the UI on {host}:{candidate}: {reason}") from exc
        sock.listen(128)
        sock.set_inheritable(True)
        return sock
    raise AssertionError("unreachable: port 0 always binds")  # pragma: no cover


def address(sock: socket.socket) -> str:
    """The URL a browser opens for ``sock``."""
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"
