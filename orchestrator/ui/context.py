"""What the web UI's handlers share: the connections, the read-only view of SQL and the guard."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from orchestrator.control.client import Client
from orchestrator.runtime.services import Services
from orchestrator.state.engine import make_reader_engine
from orchestrator.state.listing import RunListing
from orchestrator.state.repository import Repository
from orchestrator.ui.security import Guard


@dataclass
class UiContext:
    """The UI's state for one process.

    ``reader`` and ``listing`` read through an engine that never takes SQLite's write
    lock, so an open page polling for changes never slows the scheduler or the workers.
    Actions (cancel, resume) go through :class:`~orchestrator.control.client.Client` on
    ``services``, as the CLI's do. ``stopping`` is set when the server begins to stop:
    open streams end at their next poll.
    """

    services: Services
    reader: Repository
    listing: RunListing
    guard: Guard
    stopping: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def open(cls, services: Services, *, read_only: bool = False) -> UiContext:
        """Migrate the database if needed (as every command does), then open the reader."""
        services.repository  # noqa: B018 - applies the migrations before the first read
        reader = Repository(make_reader_engine(services.settings.database_url.get_secret_value()))
        guard = Guard(services.settings.ui_secret(), read_only)
        return cls(services, reader, RunListing(reader.sessions), guard)

    @property
    def client(self) -> Client:
        return Client(self.services)

    @property
    def lease_ttl(self) -> float:
        return self.services.settings.lease_ttl

    def close(self) -> None:
        self.reader.engine.dispose()
        self.services.close()
