"""Running one task body: a Python callable or a shell command, with a timeout.

A Python task runs in the calling thread when it has no timeout. With a
timeout it runs in a helper thread; Python cannot kill a thread, so on
timeout the context is marked cancelled (its next ``progress.save`` raises
and its variables are discarded) and the task is failed. A shell task runs in
its own process group, which is killed on timeout or cancellation.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import json
import logging
import os
import shlex
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from orchestrator.observability.masking import Masker
from orchestrator.packages.model import Task
from orchestrator.packages.templating import TemplateError, render
from workers.context import Flag, TaskContext
from workers.errors import TaskCancelled, TaskError, TaskTimeout

log = logging.getLogger(__name__)

MAX_OUTPUT_BYTES = 1024 * 1024
STOP_GRACE = 5.0
SHELL_TAIL_LINES = 20


class TaskRefused(TaskError):
    """A task the worker's policy does not allow (module outside the allowed roots, shell off)."""


def resolve_callable(target: str, allowed_roots: tuple[str, ...] = ()) -> Callable[[TaskContext], Any]:
    """Import ``module:function``; with ``allowed_roots``, only from those module trees."""
    module_name, _, attribute = target.partition(":")
    if allowed_roots and not any(
        module_name == root or module_name.startswith(root + ".") for root in allowed_roots
    ):
        raise TaskRefused(
            f"python task {target!r} refused: module is outside ORCHESTRATOR_TASK_MODULES "
            f"({', '.join(allowed_roots)})"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise TaskError(f"cannot import {module_name!r} for task {target!r}: {exc}") from exc
    function = getattr(module, attribute, None)
    if not callable(function):
        raise TaskError(f"{target!r}: module {module_name!r} has no callable {attribute!r}")
    return function  # type: ignore[no-any-return]


def checked_output(task_id: str, value: Any) -> Any:
    """Return ``value`` if it is JSON and within the size limit, else raise :class:`TaskError`."""
    try:
        size = len(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise TaskError(f"task {task_id!r} returned a value that is not JSON: {exc}") from exc
    if size > MAX_OUTPUT_BYTES:
        raise TaskError(
            f"output of task {task_id!r} is {size} bytes, over the limit of {MAX_OUTPUT_BYTES} bytes"
        )
    return value


def call_python(
    function: Callable[[TaskContext], Any],
    ctx: TaskContext,
    cancelled: threading.Event,
    timeout: float | None,
) -> Any:
    """Call ``function(ctx)``; with ``timeout``, in a helper thread that is abandoned on expiry."""
    if timeout is None:
        return function(ctx)
    result: dict[str, Any] = {}

    def body() -> None:
        try:
            result["value"] = function(ctx)
        except BaseException as exc:  # handed to the waiting thread, re-raised there
            result["error"] = exc

    context = contextvars.copy_context()  # the log context follows the task into its thread
    thread = threading.Thread(target=context.run, args=(body,), name=f"task-{ctx.task_id}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        cancelled.set()
        thread.join(min(STOP_GRACE, timeout))
        still = " and did not stop (it is abandoned; its writes are refused)" if thread.is_alive() else ""
        raise TaskTimeout(f"task {ctx.task_id!r} timed out after {timeout:g} s{still}")
    if "error" in result:
        raise result["error"]
    return result.get("value")


def shell_command(task: Task, variables: Mapping[str, Any], outputs: Mapping[str, Any]) -> str:
    """The task's command with every substituted value shell-quoted."""
    assert task.shell is not None
    try:
        command: str = render(task.shell, variables, outputs, quote=shlex.quote)
    except TemplateError as exc:
        raise TaskError(f"task {task.id!r}: {exc}") from exc
    return command


def run_shell(
    command: str,
    ctx: TaskContext,
    cancelled: Flag,
    timeout: float | None,
    masker: Masker,
) -> dict[str, Any]:
    """Run ``command`` with ``/bin/sh -c``; log its output; return its exit code and output tail."""
    env = dict(os.environ)
    env.update(
        ORCHESTRATOR_RUN_ID=ctx.run_id,
        ORCHESTRATOR_TASK_ID=ctx.task_id,
        ORCHESTRATOR_ATTEMPT=str(ctx.attempt),
        ORCHESTRATOR_EPOCH=str(ctx.epoch),
        ORCHESTRATOR_IDEMPOTENCY_KEY=ctx.idempotency_key,
    )
    if ctx.item is not None:
        env["ORCHESTRATOR_ITEM"] = str(ctx.item)
    process = subprocess.Popen(
        ["/bin/sh", "-c", command],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    tail: deque[str] = deque(maxlen=SHELL_TAIL_LINES)
    reader = threading.Thread(target=_pump, args=(process, ctx, tail, masker), daemon=True)
    reader.start()
    try:
        returncode = _wait(process, ctx.task_id, cancelled, timeout)
    finally:
        if process.poll() is None:
            _kill_group(process)
        reader.join(STOP_GRACE)
        if process.stdout is not None:
            process.stdout.close()
    output = masker("\n".join(tail))
    if returncode != 0:
        raise TaskError(f"command exited with status {returncode}" + (f": {output}" if output else ""))
    return {"returncode": returncode, "output": output}


def _pump(process: subprocess.Popen[bytes], ctx: TaskContext, tail: deque[str], masker: Masker) -> None:
    assert process.stdout is not None
    for raw in process.stdout:
        line = raw.decode(errors="replace").rstrip("\n")
        tail.append(line)
        ctx.log.info("%s", masker(line))


def _wait(process: subprocess.Popen[bytes], task_id: str, cancelled: Flag, timeout: float | None) -> int:
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        with contextlib.suppress(subprocess.TimeoutExpired):
            return process.wait(timeout=0.1)
        if cancelled.is_set():
            _kill_group(process)
            raise TaskCancelled(f"task {task_id!r} stopped: its attempt was cancelled")
        if deadline is not None and time.monotonic() > deadline:
            _kill_group(process)
            raise TaskTimeout(f"task {task_id!r} timed out after {timeout:g} s (command killed)")


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
