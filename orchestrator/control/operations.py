"""The schedulers' operations loop: schedules every second, the retention purge once a day.

It runs in its own thread of every scheduler process, beside the liveness
tick, so that firing slots or purging never delays the detection of a lost
node. Its clock is the Redis server's (as the leases'), so a scheduler whose
host clock is wrong neither fires slots early nor late.

The daily purge is claimed in SQL (:class:`~orchestrator.state.retention.RetentionStore`):
whichever scheduler finds it due first runs it, in a thread of its own, and the
others see it taken; it is next due a day later. ``ORCHESTRATOR_RETENTION_DAYS=0``
turns it off (``orchestrator purge`` still works).
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
from datetime import UTC, datetime, timedelta

from orchestrator.control.retention import Purger
from orchestrator.control.schedules import ScheduleRunner, Submit
from orchestrator.errors import OrchestratorError
from orchestrator.runtime.services import Services
from orchestrator.state.retention import RetentionStore

log = logging.getLogger(__name__)

INTERVAL = 1.0  # seconds between evaluations of the schedules
PURGE_JOB = "purge"
PURGE_EVERY = timedelta(days=1)


def owner_name() -> str:
    """This scheduler's name in SQL claims: host, pid and a random part (a pid is reused)."""
    return f"{socket.gethostname()[:40]}-{os.getpid()}-{secrets.token_hex(4)}"


class Operations:
    """Schedules and the daily purge, for one scheduler process."""

    def __init__(self, services: Services, submit: Submit, *, owner: str | None = None) -> None:
        self.services = services
        self.owner = owner or owner_name()
        self.schedules = ScheduleRunner(services, submit, self.owner)
        self.retention = RetentionStore(services.repository.sessions)
        self._stop = threading.Event()
        self.purging: threading.Thread | None = None

    def now(self) -> datetime:
        """The Redis server's time."""
        seconds, micros = self.services.redis.time()
        return datetime.fromtimestamp(int(seconds) + int(micros) / 1e6, UTC)

    def tick(self, now: datetime | None = None) -> None:
        """Evaluate the schedules; start the daily purge if it is due and this scheduler takes it."""
        now = now or self.now()
        self.schedules.tick(now)
        self.maybe_purge(now)

    def maybe_purge(self, now: datetime) -> bool:
        """Start the purge in a thread when it is due and this scheduler claims it; whether it did."""
        days = self.services.settings.retention_days
        if days <= 0 or (self.purging is not None and self.purging.is_alive()):
            return False
        if not self.retention.claim(PURGE_JOB, self.owner, now, PURGE_EVERY):
            return False
        self.purging = threading.Thread(
            target=self._purge, args=(timedelta(days=days), now), name="scheduler-purge", daemon=True
        )
        self.purging.start()
        return True

    def _purge(self, older_than: timedelta, now: datetime) -> None:
        log.info("daily purge: runs finished more than %s ago", older_than)
        try:
            purger = Purger(self.retention, self.services.store, forget=self.services.liveness.forget)
            report = purger.purge(older_than, now=now)
        except Exception:
            log.exception("daily purge failed; the next one is due in a day (or run `orchestrator purge`)")
            self.retention.finish(
                PURGE_JOB, self.owner, self.now(), {"error": "failed: see the scheduler's log"}
            )
            return
        self.retention.finish(PURGE_JOB, self.owner, self.now(), report.as_dict())
        log.info(
            "daily purge done: %d run(s), %d event(s), %d checkpoint director(ies) removed; %d kept",
            report.runs,
            report.events,
            report.checkpoints,
            report.kept,
        )

    def run_forever(self) -> None:
        """Tick every :data:`INTERVAL` until :meth:`stop`; a failing tick is logged and retried."""
        while not self._stop.wait(INTERVAL):
            try:
                self.tick()
            except (OrchestratorError, OSError, ConnectionError) as exc:
                log.error("operations tick failed (retrying): %s", exc)
            except Exception:
                log.exception("operations tick failed (retrying)")

    def stop(self) -> None:
        self._stop.set()
