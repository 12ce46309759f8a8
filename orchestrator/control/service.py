"""A scheduler process: the liveness loop and the operations loop (schedules, purge) in threads,
control messages in the main thread."""

from __future__ import annotations

import logging
import os
import socket
import threading

from orchestrator.control.operations import Operations
from orchestrator.control.scheduler import Scheduler
from orchestrator.control.tasks import register_control_tasks
from orchestrator.observability.metrics import gauges, serve
from orchestrator.packages import conditions
from orchestrator.runtime.broker import CONTROL_QUEUE
from orchestrator.runtime.services import Services

log = logging.getLogger(__name__)


def serve_scheduler(services: Services) -> None:
    """Run a scheduler: the liveness loop in a thread, control messages in the main thread."""
    scheduler = Scheduler(services)
    services.repository  # noqa: B018 - apply migrations before anything else
    conditions.warm()  # the first submission with a condition does not wait for it
    serve(services.settings.metrics_port)
    gauges()
    if not services.liveness.marker_present():
        scheduler.rebuild()
    register_control_tasks(services.app, scheduler)
    loop = threading.Thread(target=scheduler.run_forever, name="scheduler-tick", daemon=True)
    loop.start()
    operations = Operations(services, scheduler.submit)  # schedules and the daily purge
    threading.Thread(target=operations.run_forever, name="scheduler-operations", daemon=True).start()
    log.info(
        "scheduler up (lease TTL %gs, tick %gs)",
        services.settings.lease_ttl,
        services.settings.scheduler_tick,
    )
    try:
        services.app.worker_main(
            [
                "worker",
                f"--queues={CONTROL_QUEUE}",
                "--pool=solo",
                f"--hostname=scheduler-{os.getpid()}@{socket.gethostname()}",
                f"--loglevel={services.settings.log_level}",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ]
        )
    finally:
        operations.stop()
        scheduler.stop()
