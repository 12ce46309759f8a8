"""Task functions of the benchmark packages (imported by worker nodes as ``bench.tasks:<name>``).

``hold`` appends to a side-effect file, one JSON line when its body starts and
one when it ends: the file counts executions, whatever the orchestrator says.

Worker pool processes import this module on their first attempt: it imports nothing of the
bench's own harness (:mod:`bench.common` costs a pool process tens of milliseconds of CPU to
import, which a bench that kills a node would count as recovery time).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from workers.context import TaskContext

HOLD_LIMIT = 300.0


def noop(ctx: TaskContext) -> None:
    """Nothing: the cost measured is the orchestration's."""


def sleep(ctx: TaskContext) -> None:
    """Sleep ``params.seconds`` (a stand-in for work of known length)."""
    time.sleep(float(ctx.params["seconds"]))


def record(ctx: TaskContext, event: str) -> None:
    append_line(
        ctx.params["log"],
        {
            "run": ctx.run_id,
            "task": ctx.task_id,
            "event": event,
            "epoch": ctx.epoch,
            "pid": os.getpid(),
            "t": time.time(),
        },
    )


def step(ctx: TaskContext) -> dict[str, Any]:
    """A short task that logs its execution."""
    record(ctx, "start")
    record(ctx, "end")
    return {"epoch": ctx.epoch}


def hold(ctx: TaskContext) -> dict[str, Any]:
    """Log the start, then wait until ``params.release`` exists (or the attempt is stopped)."""
    record(ctx, "start")
    deadline = time.monotonic() + float(ctx.params.get("limit", HOLD_LIMIT))
    while not os.path.exists(ctx.params["release"]) and not ctx.cancelled:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{ctx.params['release']} did not appear")
        time.sleep(0.02)  # poll; bounded by the deadline
    record(ctx, "end")
    return {"epoch": ctx.epoch}


def append_line(path: str | os.PathLike[str], record: dict[str, Any]) -> None:
    """Append one JSON line atomically (O_APPEND): the side-effect file counting executions."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(record) + "\n").encode())
    finally:
        os.close(fd)
