"""The package model: a DAG of tasks plus typed variables.

Build one from YAML or JSON (:func:`~orchestrator.packages.validation.load_package`),
from a mapping (:func:`~orchestrator.packages.validation.parse_package`) or from
Python (:class:`~orchestrator.packages.builder.PackageBuilder`); all three go
through the same validation, which reports every problem at once with the path
of the offending field.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Mapping
from functools import cached_property
from typing import Annotated, Any, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

from orchestrator.packages.etl import Connection, ConnectionName, CopySpec, SqlSpec
from orchestrator.packages.flow import Constraint, DependsMode, DependsOnEntry, constraint_of
from orchestrator.packages.flowcheck import HANDLER_SECTIONS
from orchestrator.packages.graph import graph_issues
from orchestrator.packages.kinds import CheckpointUsage, VariableType
from orchestrator.packages.templating import EXPRESSION

PackageName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
TaskId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9_-]{1,64}$")]
VariableName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]
PythonTarget = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"),
]
ForeachItem = str | int | float | bool
# Strict scalars: without them pydantic reads `max_restarts: true` as 1 and
# `save: "no"` as False, so a mistyped package would validate silently.
StrictInt = Annotated[int, Strict()]
StrictFloat = Annotated[float, Strict()]  # accepts an int, refuses a bool or a string
StrictBool = Annotated[bool, Strict()]

DEFAULT_MAX_CONCURRENCY = 4
"""Units of one run at once unless the package says otherwise (docs: README, "Parallel units").

ETL units mostly wait on databases and files, so a few at once overlap that
waiting; four keeps what one run asks of its sources (connections, I/O) modest,
and is the same on every node, so a run resumed elsewhere behaves the same (SSIS's
default, the processor count plus two, depends on the machine the package lands on).
"""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Variable(_Strict):
    """A package variable. Without ``default`` it must be given when the run starts."""

    type: VariableType = VariableType.STR
    default: Any = None
    sensitive: StrictBool = False
    description: str = ""

    @property
    def required(self) -> bool:
        # Not "default" absent from the fields set: a dumped definition (the submission, the
        # SQL copy workers load) says ``default: null``, and no type accepts None anyway.
        return self.default is None

    @model_validator(mode="after")
    def _default_has_type(self) -> Self:
        if not self.required and not self.type.accepts(self.default):
            raise ValueError(f"default {self.default!r} is not of type {self.type.value}")
        return self


class CheckpointSettings(_Strict):
    usage: CheckpointUsage = CheckpointUsage.IF_EXISTS
    save: StrictBool = True


class Task(_Strict):
    """One unit of work: a Python callable (``module:function``), a shell command, or an ETL
    ``sql``/``copy`` task (:mod:`orchestrator.packages.etl`)."""

    # "copy" would shadow BaseModel.copy: the field is ``copy_``, read and written as "copy".
    model_config = ConfigDict(extra="forbid", frozen=True, serialize_by_alias=True)

    id: TaskId
    python: PythonTarget | None = None
    shell: str | None = None
    sql: SqlSpec | None = None
    copy_: CopySpec | None = Field(default=None, alias="copy")
    description: str = ""
    params: dict[str, Any] = Field(default_factory=dict)
    retries: StrictInt = Field(default=0, ge=0, le=100)
    retry_delay: StrictFloat = Field(default=0.0, ge=0, le=3600)
    timeout: StrictFloat | None = Field(default=None, gt=0)
    foreach: Any = None
    depends_on: list[DependsOnEntry] = Field(default_factory=list)  # control flow: packages/flow.py
    depends_on_mode: DependsMode = DependsMode.ALL
    when: str | None = None
    fail_package_on_failure: StrictBool = True
    always_rerun: StrictBool = False
    concurrency: StrictInt = Field(default=1, ge=1, le=1000)
    writes: list[VariableName] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Self:
        kinds = [k for k in ("python", "shell", "sql", "copy_") if getattr(self, k) is not None]
        if len(kinds) > 1:
            given = " and ".join(repr(k.rstrip("_")) for k in kinds)
            raise ValueError(f"a task has {'both ' if len(kinds) == 2 else ''}{given}; give exactly one")
        if not kinds:
            raise ValueError("a task needs 'python' (module:function), 'shell' (a command), 'sql' or 'copy'")
        if self.concurrency != 1 and self.foreach is None:
            raise ValueError("'concurrency' is how many foreach items run at once: it needs 'foreach'")
        if self.writes and self.python is None:
            raise ValueError(f"a {self.kind} task cannot assign variables: 'writes' is for python tasks")
        if self.writes is not None and len(set(self.writes)) != len(self.writes):
            raise ValueError("'writes' names a variable twice")
        return self

    @field_validator("foreach")
    @classmethod
    def _items(cls, value: Any) -> list[ForeachItem] | str | None:
        if value is None:
            return None
        if isinstance(value, str):
            if EXPRESSION.fullmatch(value.strip()) is None:
                raise ValueError("foreach is a list of items or one '{{ ... }}' expression giving a list")
            return value
        if not isinstance(value, list) or not all(isinstance(i, ForeachItem) for i in value):
            raise ValueError("foreach is a list of strings, numbers or booleans")
        if value:
            counts = Counter(item_key(item) for item in value)
            duplicates = sorted(key for key, count in counts.items() if count > 1)
            if duplicates:
                raise ValueError(f"foreach items must be unique; repeated: {', '.join(duplicates)}")
        return value

    @property
    def kind(self) -> str:
        for kind in ("python", "shell", "sql"):
            if getattr(self, kind) is not None:
                return kind
        return "copy"

    @property
    def constraints(self) -> list[Constraint]:
        """The precedence constraints of ``depends_on`` (a plain id is a success constraint)."""
        return [constraint_of(entry) for entry in self.depends_on]

    @property
    def upstream(self) -> list[str]:
        """The ids of the tasks it depends on, whatever the kind of constraint."""
        return [c.task for c in self.constraints]


class Package(_Strict):
    """A validated package definition. Build one with :func:`parse_package`, not directly."""

    name: PackageName
    description: str = ""
    checkpoint: CheckpointSettings = Field(default_factory=CheckpointSettings)
    max_restarts: StrictInt | None = Field(default=None, ge=0, le=1000)
    max_concurrency: StrictInt = Field(default=DEFAULT_MAX_CONCURRENCY, ge=1, le=1000)
    variables: dict[VariableName, Variable] = Field(default_factory=dict)
    connections: dict[ConnectionName, Connection] = Field(default_factory=dict)
    tasks: list[Task] = Field(min_length=1)
    # Event handlers (docs/control-flow.md): on_error once per failed task or item, the others at the end.
    on_error: list[Task] = Field(default_factory=list)
    on_success: list[Task] = Field(default_factory=list)
    on_finish: list[Task] = Field(default_factory=list)

    @model_validator(mode="after")
    def _graph(self, info: ValidationInfo) -> Self:
        # parse_package runs the graph checks itself (on raw data, so that they
        # are reported together with field errors); direct construction gets them here.
        if not (info.context or {}).get("graph_checked"):
            issues = graph_issues(self.model_dump(mode="json"))
            if issues:
                raise ValueError("; ".join(str(issue) for issue in issues))
        return self

    def handlers(self, section: str) -> list[Task]:
        """The event handlers of ``section`` (one of :data:`HANDLER_SECTIONS`)."""
        handlers: list[Task] = getattr(self, section)
        return handlers

    def task(self, task_id: str) -> Task:
        for task in self.tasks:
            if task.id == task_id:
                return task
        raise KeyError(task_id)

    @cached_property
    def definition_hash(self) -> str:
        """sha256 of the canonical definition; descriptions do not count.

        Computed once (the executor reads it for every checkpoint): the package is frozen,
        and :meth:`model_copy` drops the remembered value.
        """
        definition = self.model_dump(mode="json", exclude=_DESCRIPTIONS)
        # Keys added after the first version count only when set: a package that does not use
        # them keeps the hash it had, so its checkpoints from the previous version still match.
        _drop_defaults(definition, _LATER_PACKAGE_KEYS)
        for section in ("tasks", *HANDLER_SECTIONS):
            for task in definition.get(section, ()):
                _drop_defaults(task, _LATER_TASK_KEYS)
        body = json.dumps(definition, sort_keys=True)
        return hashlib.sha256(body.encode()).hexdigest()

    @cached_property
    def ancestors(self) -> dict[str, frozenset[str]]:
        """Every task's transitive dependencies."""
        depends = {task.id: task.upstream for task in self.tasks}
        return {task_id: _reachable(depends, task_id) for task_id in depends}

    def may_overlap(self, first: str, second: str) -> bool:
        """True if units of these two tasks (or two items of one task) may run at the same time.

        Two tasks may unless one depends on the other; two items of one foreach may
        when its ``concurrency`` is above 1; nothing overlaps at ``max_concurrency: 1``.
        """
        if self.max_concurrency == 1:
            return False
        if first == second:
            task = self.task(first)
            return task.foreach is not None and task.concurrency > 1
        return first not in self.ancestors[second] and second not in self.ancestors[first]

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        copied = super().model_copy(update=update, deep=deep)
        copied.__dict__.pop("definition_hash", None)  # a changed copy hashes its own definition
        copied.__dict__.pop("ancestors", None)
        return copied

    def to_dict(self) -> dict[str, Any]:
        """The definition as written, defaults left out: what submissions carry and SQL stores
        (parsed again, it is the same package; a 100-task chain dumps to under a third of the bytes)."""
        return self.model_dump(mode="json", exclude_defaults=True)


_LATER_PACKAGE_KEYS: dict[str, Any] = {
    "max_concurrency": DEFAULT_MAX_CONCURRENCY,
    "connections": {},
    "on_error": [],
    "on_success": [],
    "on_finish": [],
}
_LATER_TASK_KEYS: dict[str, Any] = {
    "concurrency": 1,
    "writes": None,
    "sql": None,
    "copy": None,
    "depends_on_mode": "all",
    "when": None,
}


def _drop_defaults(definition: dict[str, Any], defaults: Mapping[str, Any]) -> None:
    for key, default in defaults.items():
        if key in definition and definition[key] == default:
            del definition[key]


def _reachable(depends: Mapping[str, list[str]], start: str) -> frozenset[str]:
    seen: set[str] = set()
    pending = list(depends[start])
    while pending:
        dependency = pending.pop()
        if dependency not in seen:
            seen.add(dependency)
            pending.extend(depends.get(dependency, ()))
    return frozenset(seen)


def item_key(item: ForeachItem) -> str:
    """The stable string form of a foreach item (checkpoint keys, idempotency keys): its JSON,
    a string as itself."""
    if isinstance(item, str):
        return item
    if isinstance(item, int) and not isinstance(item, bool):
        return str(item)  # what json.dumps gives, without its cost (called per item, often)
    return json.dumps(item)


# Only the models' own descriptions: a task *param* named "description" is data
# and must change the hash.
_DESCRIPTIONS: Any = {
    "description": True,
    "variables": {"__all__": {"description"}},
    "tasks": {"__all__": {"description"}},
    "on_error": {"__all__": {"description"}},
    "on_success": {"__all__": {"description"}},
    "on_finish": {"__all__": {"description"}},
}
