"""A copy transform the process tests steer through the copy task's params.

``hold`` (a directory) with ``hold_epochs``: in those epochs the transform logs
``holding`` at its ``hold_batch``-th batch and waits there (inside the batch,
before its commit) until the file ``<hold>/release-<epoch>`` exists, so a test
can kill or pause the node mid-copy at a known point.
"""

from __future__ import annotations

import os
from typing import Any

from tests.support import tasks as T
from workers.context import TaskContext

_batches: dict[tuple[str, int], int] = {}


def hold(ctx: TaskContext, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    key = (ctx.run_id, ctx.epoch)
    _batches[key] = _batches.get(key, 0) + 1
    if ctx.epoch in ctx.params.get("hold_epochs", []) and _batches[key] == ctx.params.get("hold_batch", 3):
        T.record(ctx, "holding", first=rows[0]["id"], pid=os.getpid())
        T.wait_for_file(os.path.join(ctx.params["hold"], f"release-{ctx.epoch}"), timeout=120)
        T.record(ctx, "released", first=rows[0]["id"])
    return rows
