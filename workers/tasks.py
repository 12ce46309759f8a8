"""The Celery tasks: thin shells that decode a message and call a plain function.

A message whose body is not what the task expects is refused and logged, never
executed. Pickled messages never reach this far: the app accepts JSON only
(:mod:`workers.app`).
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from pydantic import ValidationError

from checkpoints import InvalidIdentifier, validate_run_id
from orchestrator.errors import OrchestratorError
from orchestrator.scheduler import Scheduler
from orchestrator.services import Services
from workers.app import RESUME_TASK, RUN_TASK, SUBMIT_TASK
from workers.attempt import AttemptMessage, run_attempt
from workers.lease import exit_after

log = logging.getLogger(__name__)

FENCED_GRACE = 2.0


def register_worker_tasks(app: Celery, services: Services, node: str) -> None:
    """The attempt task a worker node executes."""

    @app.task(name=RUN_TASK, acks_late=False, ignore_result=True)  # type: ignore[untyped-decorator]
    def run_attempt_task(**body: Any) -> None:
        try:
            message = AttemptMessage.model_validate(body)
        except ValidationError as exc:
            log.error("malformed attempt message refused: %s", _short(exc))
            return
        run_attempt(services, message, node, on_lost=exit_after(FENCED_GRACE))


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


def _short(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors())
