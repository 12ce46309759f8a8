"""The schedulers' Celery tasks: submissions and resumes from the control queue.

Thin shells like the worker's (:mod:`workers.tasks`): a message whose body is
not what the task expects is refused and logged, never executed.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery

from checkpoints import InvalidIdentifier, validate_run_id
from orchestrator.control.scheduler import Scheduler
from orchestrator.errors import OrchestratorError
from orchestrator.runtime.broker import RESUME_TASK, SUBMIT_TASK

log = logging.getLogger(__name__)


def register_control_tasks(app: Celery, scheduler: Scheduler) -> None:
    """The submission and resume tasks a scheduler executes."""

    @app.task(name=SUBMIT_TASK, acks_late=True, ignore_result=True)  # type: ignore[untyped-decorator]
    def submit_task(payload: Any = None, **extra: Any) -> None:
        if extra or not isinstance(payload, dict):
            log.error("malformed submission refused: expected one 'payload' object")
            return
        scheduler.submit(payload)

    @app.task(name=RESUME_TASK, acks_late=True, ignore_result=True)  # type: ignore[untyped-decorator]
    def resume_task(run_id: Any = None, **extra: Any) -> None:
        try:
            if extra:
                raise InvalidIdentifier(f"unexpected fields {sorted(extra)}")
            scheduler.resume(validate_run_id(run_id))
        except (InvalidIdentifier, OrchestratorError) as exc:
            log.error("resume of run %r refused: %s", run_id, exc)
