"""Task functions of ``examples/orders_control_flow.yaml``: a load that may fail, and its handlers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from workers.context import TaskContext


def load(ctx: TaskContext) -> dict[str, Any]:
    """Pretend to load ``rows`` rows from the stage file; fail when ``fail`` is true."""
    stage = Path(ctx.params["workdir"]) / "stage.txt"
    if ctx.params.get("fail"):
        raise RuntimeError(f"load of {stage} failed (fail_load is true)")
    return {"rows": int(ctx.params["rows"])}


def publish(ctx: TaskContext) -> dict[str, Any]:
    return {"published": ctx.outputs["load"]["rows"]}


def alert(ctx: TaskContext) -> dict[str, Any]:
    """An on_error handler: append the event (task, item, error, attempt) to alerts.jsonl."""
    path = Path(ctx.params["workdir"]) / "alerts.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as file:
        file.write(json.dumps(dict(ctx.event or {})) + "\n")
    return {"alerted": (ctx.event or {}).get("task")}
