"""Live updates: a server-sent events stream of what changed, for an open page to refresh itself.

The stream polls cheap indexed reads every half second (events after the last
id sent; one run's state and task states; the set of live nodes) and sends:

* ``run-event``: a new event of the run (or of any run), with the event's id as
  the SSE id, so a browser that reconnects (``Last-Event-ID``) misses nothing;
* ``run-state``: the run's state or a task's state changed without an event
  (a task started), or a task logged a line (the page shows its log);
* ``nodes``: a node came up, was lost or stopped (streams not about one run);
* ``ready``, once, after the first poll: changes from then on will be sent.

A stream ends by itself after ``seconds`` (default 300, the browser reconnects),
when the client goes away, or when the server begins to stop. A failure to read
is reported to the client as an ``error`` message and logged, and the stream
ends (the browser retries).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import redis
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from orchestrator.control.views import event_row
from orchestrator.ui.context import UiContext

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5
KEEPALIVE_SECONDS = 15.0
STREAM_SECONDS = 300.0
RETRY_MS = 1000


def message(kind: str, data: Any, event_id: int | None = None) -> str:
    """One SSE message; ``data`` as one line of JSON."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {kind}\ndata: {json.dumps(data, default=str, separators=(',', ':'))}\n\n"


@dataclass
class Feed:
    """What one stream has sent so far, and the poll that finds what is new."""

    ctx: UiContext
    run_id: str | None
    last_id: int
    run_digest: tuple[Any, ...] | None = None
    nodes: dict[str, str] | None = field(default=None)

    def poll(self) -> list[str]:
        """Messages for what changed since the last poll (blocking: run it in a thread)."""
        out = []
        for event in self.ctx.listing.events_after(self.last_id, self.run_id):
            row = event_row(event)
            short = {k: row[k] for k in ("id", "at", "kind", "node", "attempt")}
            out.append(message("run-event", {**short, "run_id": event.run_id}, event.id))
            self.last_id = event.id
        if self.run_id is not None:
            digest = self.ctx.listing.run_digest(self.run_id)
            if self.run_digest is not None and digest != self.run_digest:
                out.append(message("run-state", {"run_id": self.run_id}))
            self.run_digest = digest
        else:
            nodes = self._node_states()
            if self.nodes is not None and nodes != self.nodes:
                out.append(message("nodes", nodes))
            self.nodes = nodes
        return out

    def _node_states(self) -> dict[str, str]:
        alive = set(self.ctx.services.liveness.alive_nodes())
        known = {n.name: n.state.value for n in self.ctx.reader.nodes()}
        return {
            name: "alive" if name in alive else known.get(name, "unknown")
            for name in sorted(alive | set(known))
        }


def start_id(ctx: UiContext, after: int | None, last_event_id: str | None) -> int:
    """Where a stream starts: after the browser's ``Last-Event-ID``, else ``after``, else now."""
    if last_event_id and last_event_id.strip().isdigit():
        return int(last_event_id)
    if after is not None:
        return after
    return ctx.listing.last_event_id()


async def changes(request: Request, feed: Feed, seconds: float) -> AsyncIterator[str]:
    """The stream's messages until ``seconds`` pass or the client leaves."""
    yield f"retry: {RETRY_MS}\n\n"
    started = quiet = time.monotonic()
    ready = False
    while time.monotonic() - started < seconds and not feed.ctx.stopping.is_set():
        if await request.is_disconnected():
            return
        try:
            sent = await run_in_threadpool(feed.poll)
        except (SQLAlchemyError, redis.RedisError) as exc:
            log.warning("live stream stopped: cannot read the state: %s", exc)
            yield message("error", {"message": f"cannot read the state ({type(exc).__name__}); retrying"})
            return
        for text in sent:
            yield text
        if not ready:
            yield message("ready", {"after": feed.last_id})
            ready = True
        now = time.monotonic()
        if sent:
            quiet = now
        elif now - quiet >= KEEPALIVE_SECONDS:
            yield ": keep-alive\n\n"
            quiet = now
        await asyncio.sleep(POLL_SECONDS)
