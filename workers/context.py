"""What a task function receives: :class:`TaskContext` and its progress handle."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

from orchestrator.errors import VariableInvalid
from orchestrator.packages.model import ForeachItem, Package
from orchestrator.packages.variables import convert
from workers.errors import TaskCancelled


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
    log: logging.LoggerAdapter[logging.Logger]
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
