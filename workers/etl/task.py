"""An ETL task as a task function: what :class:`~workers.units.UnitRunner` calls for ``sql``/``copy``."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from orchestrator.observability.metrics import bounded, metrics
from orchestrator.packages.model import Package, Task
from orchestrator.packages.templating import TemplateError, render
from workers.context import TaskContext
from workers.errors import TaskError
from workers.etl.connections import Connections, EnginePool
from workers.etl.copy import run_copy
from workers.etl.sql import run_sql
from workers.invoke import resolve_callable

Report = Callable[[dict[str, Any]], None]


def etl_function(
    task: Task,
    package: Package,
    allowed_modules: tuple[str, ...],
    report: Report | None = None,
    pool: EnginePool | None = None,
) -> Callable[[TaskContext], Any]:
    """``task`` (a ``sql`` or ``copy`` task) as a function of its context; ``report`` receives a
    copy's progress (rows, rows per second) about once a second; ``pool``: the attempt's engines."""
    return functools.partial(run_etl, task, package, allowed_modules, report or (lambda detail: None), pool)


def run_etl(
    task: Task,
    package: Package,
    allowed_modules: tuple[str, ...],
    report: Report,
    pool: EnginePool | None,
    ctx: TaskContext,
) -> Any:
    """Run a ``sql`` or ``copy`` task with the package's connections: engines from the attempt's
    ``pool`` (which disposes of them when the attempt ends), else the task's own, closed when it ends."""
    connections = Connections(package.connections, ctx.vars, pool)
    try:
        if task.sql is not None:
            try:
                params = render(task.sql.params, ctx.vars, ctx.outputs)
            except TemplateError as exc:
                raise TaskError(f"sql params: {exc}") from exc
            return run_sql(task.sql, params, connections)
        spec = task.copy_
        if spec is None:
            raise TaskError(f"task {task.id!r} is not an ETL task")
        transform = resolve_callable(spec.transform, allowed_modules) if spec.transform else None
        counted = _counter(package.name, task.id)
        return run_copy(spec, ctx, connections, transform, counted, report)  # type: ignore[arg-type]
    finally:
        connections.close()


def _counter(package: str, task: str) -> Callable[[int], None]:
    """``orchestrator_copy_rows_total{package,task}``, labels bounded like the other task metrics."""
    label = bounded("package", package)
    task_label = bounded("task", f"{label}/{task}").partition("/")[2] or "other"
    counter = metrics().copy_rows.labels(package=label, task=task_label)
    return counter.inc
