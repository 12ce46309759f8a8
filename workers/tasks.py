"""The worker's Celery task: a thin shell that decodes a message and calls a plain function.

A message whose body is not what the task expects is refused and logged, never
executed. Pickled messages never reach this far: the app accepts JSON only
(:mod:`orchestrator.runtime.broker`). The schedulers' tasks are in
:mod:`orchestrator.control.tasks`.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from pydantic import ValidationError

from orchestrator.runtime.broker import RUN_TASK
from orchestrator.runtime.services import Services
from workers.attempt import AttemptMessage, run_attempt
from workers.lease import exit_after
from workers.watch import AttemptFiles

log = logging.getLogger(__name__)

FENCED_GRACE = 2.0


def register_worker_tasks(
    app: Celery, services: Services, node: str, files: AttemptFiles | None = None
) -> None:
    """The attempt task a worker node executes (``files``: where attempts note themselves for the
    node's pool watch)."""

    @app.task(name=RUN_TASK, acks_late=False, ignore_result=True)  # type: ignore[untyped-decorator]
    def run_attempt_task(**body: Any) -> None:
        try:
            message = AttemptMessage.model_validate(body)
        except ValidationError as exc:
            log.error("malformed attempt message refused: %s", _short(exc))
            return
        run_attempt(services, message, node, on_lost=exit_after(FENCED_GRACE), files=files)


def _short(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors())
