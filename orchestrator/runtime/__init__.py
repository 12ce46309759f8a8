"""What a process runs with: its settings, the connections it makes, the broker and its queues.

Modules: :mod:`~orchestrator.runtime.settings` (every setting and its default),
:mod:`~orchestrator.runtime.services` (Redis, SQL, Celery and the checkpoint store, made
once per process), :mod:`~orchestrator.runtime.broker` (queue and task names, the Celery
app, finding the broker).
"""

from orchestrator.runtime.broker import (
    CONTROL_QUEUE,
    RESUME_TASK,
    RUN_QUEUE,
    RUN_TASK,
    SUBMIT_TASK,
    create_app,
    resolve_broker_url,
)
from orchestrator.runtime.services import Services
from orchestrator.runtime.settings import Settings, get_settings

# Grouped by role, as the house style asks; RUF022 would sort the groups together.
__all__ = [  # noqa: RUF022
    # settings
    "Settings",
    "get_settings",
    # connections
    "Services",
    # the broker
    "CONTROL_QUEUE",
    "RESUME_TASK",
    "RUN_QUEUE",
    "RUN_TASK",
    "SUBMIT_TASK",
    "create_app",
    "resolve_broker_url",
]
