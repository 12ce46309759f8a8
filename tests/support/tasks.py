"""Task functions the tests run. Each appends what it does to a JSON-lines log.

The log is the side-effect file that counts executions: one ``start`` line
when a task body begins and one ``end`` line when it returns. In-process tests
can add behaviour per task id through :data:`HOOKS`; subprocess tests steer
tasks through params (``fail``, ``hold``, ``units``...).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from workers.context import TaskContext

LOG_ENV = "ORCH_TEST_LOG"
HOOKS: dict[str, Callable[[TaskContext], None]] = {}


def log_path(ctx: TaskContext) -> Path:
    return Path(ctx.params.get("log") or os.environ[LOG_ENV])


def record(ctx: TaskContext, event: str, **extra: Any) -> None:
    line = {"task": ctx.task_id, "item": ctx.item, "event": event, "epoch": ctx.epoch, **extra}
    fd = os.open(log_path(ctx), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(line) + "\n").encode())
    finally:
        os.close(fd)


def read_log(path: Path) -> list[dict[str, Any]]:
    """The log's complete lines: a last line without its newline is a task's append still in
    progress (a reader polling the file can see part of a concurrent write)."""
    if not path.exists():
        return []
    text = path.read_text()
    return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines() if line]


def count(entries: list[dict[str, Any]], event: str, task: str, item: Any = None) -> int:
    return sum(1 for e in entries if e["event"] == event and e["task"] == task and e["item"] == item)


def wait_for_file(path: str, timeout: float = 60.0) -> None:
    """Block the task until ``path`` exists (the test creates it), with a deadline."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout}s")
        time.sleep(0.01)  # poll interval; bounded by the deadline


def step(ctx: TaskContext) -> dict[str, Any]:
    """A generic task: log start, run the hook, optionally hold (one foreach item only, with
    ``hold_item``) or fail (with ``message``, or a message of its own), log end."""
    record(ctx, "start")
    hook = HOOKS.get(ctx.task_id)
    if hook is not None:
        hook(ctx)
    if "hold" in ctx.params and ctx.params.get("hold_item", ctx.item) == ctx.item:
        record(ctx, "holding")
        wait_for_file(ctx.params["hold"])
    if ctx.params.get("fail"):
        raise RuntimeError(ctx.params.get("message") or f"{ctx.task_id} failed on purpose")
    if "add" in ctx.params:
        ctx.vars["counter"] += int(ctx.params["add"])
    record(ctx, "end")
    return {"task": ctx.task_id, "item": ctx.item, "epoch": ctx.epoch}


def units(ctx: TaskContext) -> dict[str, Any]:
    """Process ``units`` units, saving progress after each; may hold before unit ``hold_at``.

    With ``pace``, each unit takes that many seconds; with ``pad``, each saved progress
    value carries that many bytes more (a save that needs room on the disk).
    """
    record(ctx, "start")
    start = (ctx.progress.get() or {"done": 0})["done"]
    total = int(ctx.params["units"])
    for unit in range(start, total):
        if unit == ctx.params.get("hold_at") and "hold" in ctx.params:
            record(ctx, "holding", unit=unit)
            wait_for_file(ctx.params["hold"])
        hook = HOOKS.get(f"{ctx.task_id}:unit")
        if hook is not None:
            hook(ctx)
        record(ctx, "unit", unit=unit)
        if "pace" in ctx.params:
            time.sleep(float(ctx.params["pace"]))  # the unit's work
        ctx.progress.save(
            {"done": unit + 1, **({"pad": "x" * int(ctx.params["pad"])} if "pad" in ctx.params else {})}
        )
        record(ctx, "saved", unit=unit)
    record(ctx, "end")
    return {"task": ctx.task_id, "resumed_at": start}


def fail_times(ctx: TaskContext) -> dict[str, Any]:
    """Fail until the log shows ``times`` earlier starts of this task, then succeed."""
    earlier = count(read_log(log_path(ctx)), "start", ctx.task_id, ctx.item)
    record(ctx, "start")
    if earlier < int(ctx.params["times"]):
        raise RuntimeError(f"transient failure {earlier + 1}")
    record(ctx, "end")
    return {"tries": earlier + 1}


def sleepy(ctx: TaskContext) -> None:
    """Sleep ``seconds`` in small steps, stopping early when the attempt is cancelled."""
    record(ctx, "start")
    deadline = time.monotonic() + float(ctx.params["seconds"])
    while time.monotonic() < deadline and not ctx.cancelled:
        time.sleep(0.01)  # poll interval; bounded by the deadline
    record(ctx, "end", cancelled=ctx.cancelled)


def handler(ctx: TaskContext) -> dict[str, Any]:
    """An event handler: like :func:`step`, and each log line carries ``ctx.event`` as ``handled``."""
    record(ctx, "start", handled=ctx.event)
    hook = HOOKS.get(ctx.task_id)
    if hook is not None:
        hook(ctx)
    if "hold" in ctx.params:
        record(ctx, "holding", handled=ctx.event)
        wait_for_file(ctx.params["hold"])
    if ctx.params.get("fail"):
        raise RuntimeError(f"{ctx.task_id} failed on purpose")
    record(ctx, "end", handled=ctx.event)
    return {"handled": (ctx.event or {}).get("task")}


def chatter(ctx: TaskContext) -> dict[str, Any]:
    """Log ``lines`` numbered lines through ``ctx.log`` (then the ``password`` variable, if the
    package declares it, and ``say``), record ``logged``, then hold like :func:`step` while ``hold``
    is missing."""
    lines = int(ctx.params.get("lines", 3))
    for n in range(1, lines + 1):
        ctx.log.info("line %d of %s", n, ctx.task_id if ctx.item is None else ctx.item)
    if "password" in ctx.vars:
        ctx.log.warning("connecting with password %s", ctx.vars["password"])
    if "say" in ctx.params:
        ctx.log.info("%s", ctx.params["say"])
    record(ctx, "logged")
    if "hold" in ctx.params:
        wait_for_file(ctx.params["hold"])
    return {"lines": lines}
