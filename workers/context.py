"""What a task function receives: :class:`TaskContext` and its progress handle."""

from __future__ import annotations

import copy
import logging
import sys
import traceback
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

from orchestrator.errors import VariableInvalid
from orchestrator.packages.model import ForeachItem, Package
from orchestrator.packages.variables import convert
from workers.errors import TaskCancelled

_log = logging.getLogger(__name__)


class Flag(Protocol):
    """Anything with ``is_set()``: an Event, or several combined."""

    def is_set(self) -> bool: ...


class TaskVariables(dict[str, Any]):
    """The package variables as one unit sees them; assignments are type-checked.

    A unit works on its own copy: the run's variables as they were when it
    started (lists and dicts copied deeply), plus what it assigns. What it
    changed (:meth:`changes`) becomes the run's when its progress save or its
    completion is recorded. With ``writes`` given (the task's declaration),
    assigning any other variable is refused at once.
    """

    def __init__(
        self,
        package: Package,
        values: Mapping[str, Any],
        *,
        writes: Collection[str] | None = None,
        unit: str = "",
    ) -> None:
        super().__init__({n: _copied(v) for n, v in values.items()})
        self._package = package
        self._original = dict(values)  # the task gets copies: these are never changed in place
        self._writes = None if writes is None else frozenset(writes)
        self._unit = unit

    def __setitem__(self, name: str, value: Any) -> None:
        declared = self._package.variables.get(name)
        if declared is None:
            raise VariableInvalid(f"task assigned unknown variable {name!r}; declare it in the package")
        self._check_declared(name)
        super().__setitem__(name, convert(name, declared, value))

    def changes(self) -> dict[str, Any]:
        """The variables this unit changed (assigned, updated, or a list or dict changed in place)."""
        changed: dict[str, Any] = {}
        for name, value in self.items():
            if name not in self._original or value != self._original[name]:
                declared = self._package.variables.get(name)
                if declared is None:
                    raise VariableInvalid(f"task set unknown variable {name!r}; declare it in the package")
                self._check_declared(name)
                changed[name] = convert(name, declared, value)
        return changed

    def snapshot(self) -> dict[str, Any]:
        return dict(self)

    def _check_declared(self, name: str) -> None:
        if self._writes is not None and name not in self._writes:
            declared = ", ".join(sorted(self._writes)) or "none"
            raise VariableInvalid(
                f"{self._unit or 'task'} assigned variable {name!r}, which its task does not list "
                f"in 'writes' ({declared})"
            )


def _copied(value: Any) -> Any:
    return copy.deepcopy(value) if isinstance(value, list | dict) else value


LineSink = Callable[[str, str], None]
"""Receives each line a task logs: its level name (lower case) and its text, not masked yet."""


class TaskLogger(logging.LoggerAdapter[logging.Logger]):
    """``ctx.log``: logs as usual, and hands each line of level INFO or above to a sink.

    The sink keeps the line with the run (:meth:`~workers.execution.ExecutionHooks.task_log`),
    whatever level the node's own log output is set to; a traceback (``exc_info``) is
    part of the line. A line the sink cannot take is reported on the node's log; the
    task goes on.
    """

    def __init__(self, logger: logging.Logger, extra: Mapping[str, Any], sink: LineSink) -> None:
        super().__init__(logger, extra)
        self._sink = sink

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        super().log(level, msg, *args, **kwargs)
        if level < logging.INFO and not self.isEnabledFor(level):
            return
        text = _text(msg, args)
        exc_info = kwargs.get("exc_info")
        if exc_info:
            text = f"{text}\n{_traceback(exc_info)}"
        try:
            self._sink(logging.getLevelName(level).lower(), text)
        except Exception:
            _log.exception("a log line of task %s was not kept with the run", (self.extra or {}).get("task"))


def _text(msg: object, args: tuple[object, ...]) -> str:
    if not args:
        return str(msg)
    try:
        return str(msg) % args
    except (TypeError, ValueError):  # as logging itself would fail to format it: keep what was given
        return f"{msg} {args!r}"


def _traceback(exc_info: Any) -> str:
    if isinstance(exc_info, BaseException):
        exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
    elif not isinstance(exc_info, tuple):
        exc_info = sys.exc_info()
    if exc_info[0] is None:
        return "NoneType: None"
    return "".join(traceback.format_exception(*exc_info)).rstrip("\n")


class Progress:
    """In-task progress: ``get`` what an earlier attempt saved, ``save`` durably (fenced)."""

    def __init__(self, saved: Any, save: Callable[[Any], None], cancelled: Flag) -> None:
        self._value = saved
        self._save = save
        self._cancelled = cancelled

    def get(self) -> Any:
        """The value last saved for this task (or foreach item), by any attempt; else ``None``."""
        return self._value

    def save(self, value: Any) -> None:
        """Write ``value`` (and the current variables) to the checkpoint before returning.

        Raises :class:`~workers.errors.TaskCancelled` when this attempt was
        stopped: a task should let it propagate.
        """
        if self._cancelled.is_set():
            raise TaskCancelled("attempt stopped; progress not saved")
        self._save(value)
        self._value = value


@dataclass
class TaskContext:
    """The task contract (see the README): params, variables, outputs, progress and identity."""

    run_id: str
    package: str
    task_id: str
    attempt: int
    epoch: int
    params: dict[str, Any]
    vars: TaskVariables
    outputs: Mapping[str, Any]
    item: ForeachItem | None
    progress: Progress
    idempotency_key: str
    log: TaskLogger
    _cancelled: Flag = field(repr=False)
    event: Mapping[str, Any] | None = None
    """In an event handler: ``{task, item, error, attempt}`` (on_error) or
    ``{state, error, attempt}`` (on_success, on_finish); else None."""

    @property
    def cancelled(self) -> bool:
        """True once the attempt was stopped; long loops may poll it between units of work."""
        return self._cancelled.is_set()


def read_only(outputs: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(outputs))
