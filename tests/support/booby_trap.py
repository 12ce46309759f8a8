"""A task module that must never be imported where it is not allowed.

Importing it leaves a marker file beside the execution log (``ORCH_TEST_LOG``), so a test can
prove that a worker refused the task *before* importing its module: a module's top level runs
code on import, which is exactly what ``ORCHESTRATOR_TASK_MODULES`` keeps out.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tests.support.tasks import LOG_ENV
from workers.context import TaskContext

MARKER = "booby-trap-imported"

if os.environ.get(LOG_ENV):
    (Path(os.environ[LOG_ENV]).parent / MARKER).write_text(f"imported by pid {os.getpid()}\n")


def step(ctx: TaskContext) -> dict[str, Any]:
    return {"ran": ctx.task_id}
