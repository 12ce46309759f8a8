"""The web UI: runs, their recovery timeline and the package graph, live; a JSON API.

Modules: :mod:`~orchestrator.ui.app` (the ASGI application), :mod:`~orchestrator.ui.pages`
(HTML pages), :mod:`~orchestrator.ui.api` (JSON API and its OpenAPI description),
:mod:`~orchestrator.ui.stream` (server-sent events), :mod:`~orchestrator.ui.detail` (the run
page's content), :mod:`~orchestrator.ui.graph` (the package graph as SVG, laid out here),
:mod:`~orchestrator.ui.timeline` (events grouped by attempt), :mod:`~orchestrator.ui.query`
(the run list's query string), :mod:`~orchestrator.ui.security` (token, session, CSRF,
origin checks, headers), :mod:`~orchestrator.ui.render` (templates),
:mod:`~orchestrator.ui.context` (what handlers share), :mod:`~orchestrator.ui.server`
(uvicorn) and :mod:`~orchestrator.ui.sockets` (the listening socket).

Part of the orchestrator's core: it imports neither the workers nor the command line,
which serves it (``orchestrator ui``). Only the socket helpers are exported here: the
application is imported from :mod:`orchestrator.ui.app` where it is served, since loading
the web framework would slow every other command.
"""

from orchestrator.ui.sockets import DEFAULT_PORT, address, bind

__all__ = ["DEFAULT_PORT", "address", "bind"]
