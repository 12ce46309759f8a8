"""Build a package from Python: the same model as YAML, through the same validation.

.. code-block:: python

    package = (
        PackageBuilder("orders_nightly", description="Nightly orders load")
        .checkpoint(usage="if_exists", save=True)
        .variable("rows_loaded", type="int", default=0)
        .python("extract", "examples.orders:extract", params={"path": "data/orders.csv"})
        .shell("report", "echo loaded {{ vars.rows_loaded }}", depends_on=["extract"])
        .build()
    )

The builder only collects the mapping a YAML file would hold; :meth:`PackageBuilder.build`
hands it to :func:`~orchestrator.packages.validation.parse_package`, so every problem is
reported at once in one :class:`~orchestrator.errors.PackageInvalid`, with the
same paths and messages as for a file.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Self, TypedDict, Unpack

from orchestrator.errors import Issue, PackageInvalid
from orchestrator.packages.kinds import CheckpointUsage, VariableType
from orchestrator.packages.model import ForeachItem, Package
from orchestrator.packages.validation import parse_package

__all__ = ["PackageBuilder"]


class _CheckpointOptions(TypedDict, total=False):
    usage: CheckpointUsage | str
    save: bool


class _VariableOptions(TypedDict, total=False):
    type: VariableType | str
    default: Any  # left out: the variable is required when the run starts
    sensitive: bool
    description: str


class _TaskOptions(TypedDict, total=False):
    params: Mapping[str, Any]
    retries: int
    retry_delay: float
    timeout: float | None
    foreach: Sequence[ForeachItem] | str
    depends_on: Iterable[str | Mapping[str, str]]  # an id, or {"task": id, "on": "failure"}...
    depends_on_mode: str
    when: str
    fail_package_on_failure: bool
    always_rerun: bool
    description: str
    concurrency: int
    writes: Iterable[str]


class _HandlerOptions(_TaskOptions, total=False):
    python: str
    shell: str


class PackageBuilder:
    """Collects a package definition call by call; :meth:`build` validates it.

    Every method returns the builder. Options that are left out are not
    written, so the defaults are the package model's, exactly as for a file.
    """

    def __init__(self, name: str, *, description: str | None = None) -> None:
        self._data: dict[str, Any] = {"name": name}
        if description is not None:
            self._data["description"] = description
        self._variables: dict[str, dict[str, Any]] = {}
        self._tasks: list[dict[str, Any]] = []
        self._issues: list[Issue] = []

    def checkpoint(self, **options: Unpack[_CheckpointOptions]) -> Self:
        """SSIS ``CheckpointUsage`` (never, if_exists, always) and ``SaveCheckpoints``."""
        self._data["checkpoint"] = dict(options)
        return self

    def max_restarts(self, count: int) -> Self:
        """Node-loss resubmissions allowed before the run fails."""
        self._data["max_restarts"] = count
        return self

    def max_concurrency(self, count: int) -> Self:
        """Units (tasks, foreach items) of one run at once."""
        self._data["max_concurrency"] = count
        return self

    def variable(self, name: str, **options: Unpack[_VariableOptions]) -> Self:
        """Declare a variable; without ``default`` it is required when the run starts."""
        if name in self._variables:
            # a mapping cannot hold it twice: say so instead of keeping the last silently
            self._issues.append(Issue(f"variables.{name}", f"variable {name!r} declared twice"))
        self._variables[name] = {key: _as_data(value) for key, value in options.items()}
        return self

    def python(self, task_id: str, target: str, **options: Unpack[_TaskOptions]) -> Self:
        """Add a task calling ``target`` (``package.module:function``) on the worker."""
        return self._task({"id": task_id, "python": target}, options)

    def shell(self, task_id: str, command: str, **options: Unpack[_TaskOptions]) -> Self:
        """Add a task running ``command``; ``{{ ... }}`` values are shell-quoted when run."""
        return self._task({"id": task_id, "shell": command}, options)

    def handler(self, section: str, handler_id: str, **options: Unpack[_HandlerOptions]) -> Self:
        """Add an event handler to ``on_error``, ``on_success`` or ``on_finish`` (docs/control-flow.md);
        give ``python`` or ``shell`` among the options."""
        handler = {"id": handler_id, **{key: _as_data(value) for key, value in options.items()}}
        self._data.setdefault(section, []).append(handler)
        return self

    def _task(self, task: dict[str, Any], options: _TaskOptions) -> Self:
        task.update({key: _as_data(value) for key, value in options.items()})
        self._tasks.append(task)
        return self

    def to_dict(self) -> dict[str, Any]:
        """The definition as the mapping a YAML or JSON file would hold (a copy)."""
        data = copy.deepcopy(self._data)
        if self._variables:
            data["variables"] = copy.deepcopy(self._variables)
        data["tasks"] = copy.deepcopy(self._tasks)
        return data

    def build(self) -> Package:
        """Validate with :func:`parse_package`; raise :class:`PackageInvalid` listing all."""
        source = f"PackageBuilder({self._data['name']!r})"
        try:
            package = parse_package(self.to_dict(), source=source)
        except PackageInvalid as exc:
            raise PackageInvalid([*self._issues, *exc.issues], source=source) from None
        if self._issues:
            raise PackageInvalid(list(self._issues), source=source)
        return package


def _as_data(value: Any) -> Any:
    """A deep copy, with tuples and other iterables as lists and mappings as dicts.

    Copying keeps a later change to the caller's list or dict out of the package.
    """
    if isinstance(value, Mapping):
        return {key: _as_data(item) for key, item in value.items()}
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        return copy.deepcopy(value)
    return [_as_data(item) for item in value]
