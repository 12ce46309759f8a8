"""The package model: a DAG of tasks plus typed variables, validated before anything runs.

Packages come from YAML or JSON (:func:`load_package`), from a mapping
(:func:`parse_package`) or from Python (:class:`~orchestrator.builder.PackageBuilder`);
all three go through the same validation, which reports every problem at once
with the path of the offending field (see :mod:`orchestrator.validation`).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Self

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from orchestrator.errors import Issue, PackageInvalid
from orchestrator.templating import EXPRESSION

PackageName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
TaskId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9_-]{1,64}$")]
VariableName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]
PythonTarget = Annotated[
    str,
    StringConstraints(
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"
    ),
]
ForeachItem = str | int | float | bool


class VariableType(StrEnum):
    STR = "str"
    INT = "int"
    FLOAT = "float"
    BOOL = "bool"
    LIST = "list"
    DICT = "dict"

    def accepts(self, value: Any) -> bool:
        """True if ``value`` is of this type (bool is not an int; an int is a float)."""
        if self is VariableType.INT:
            return isinstance(value, int) and not isinstance(value, bool)
        if self is VariableType.FLOAT:
            return isinstance(value, int | float) and not isinstance(value, bool)
        expected = {"str": str, "bool": bool, "list": list, "dict": dict}[self.value]
        return isinstance(value, expected)


class CheckpointUsage(StrEnum):
    """SSIS ``CheckpointUsage``: whether a run starts from an existing checkpoint."""

    NEVER = "never"
    IF_EXISTS = "if_exists"
    ALWAYS = "always"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Variable(_Strict):
    """A package variable. Without ``default`` it must be given when the run starts."""

    type: VariableType = VariableType.STR
    default: Any = None
    sensitive: bool = False
    description: str = ""

    @property
    def required(self) -> bool:
        return "default" not in self.model_fields_set

    @model_validator(mode="after")
    def _default_has_type(self) -> Self:
        if not self.required and not self.type.accepts(self.default):
            raise ValueError(f"default {self.default!r} is not of type {self.type.value}")
        return self


class CheckpointSettings(_Strict):
    usage: CheckpointUsage = CheckpointUsage.IF_EXISTS
    save: bool = True


class Task(_Strict):
    """One unit of work: a Python callable (``module:function``) or a shell command."""

    id: TaskId
    python: PythonTarget | None = None
    shell: str | None = None
    description: str = ""
    params: dict[str, Any] = Field(default_factory=dict)
    retries: int = Field(default=0, ge=0, le=100)
    retry_delay: float = Field(default=0.0, ge=0, le=3600)
    timeout: float | None = Field(default=None, gt=0)
    foreach: Any = None
    depends_on: list[TaskId] = Field(default_factory=list)
    fail_package_on_failure: bool = True
    always_rerun: bool = False

    @model_validator(mode="after")
    def _one_kind(self) -> Self:
        if (self.python is None) == (self.shell is None):
            raise ValueError("a task needs exactly one of 'python' or 'shell'")
        return self

    @field_validator("foreach")
    @classmethod
    def _items(cls, value: Any) -> list[ForeachItem] | str | None:
        if value is None:
            return None
        if isinstance(value, str):
            if EXPRESSION.fullmatch(value.strip()) is None:
                raise ValueError(
                    "foreach is a list of items or one '{{ ... }}' expression giving a list"
                )
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
        return "python" if self.python is not None else "shell"


class Package(_Strict):
    """A validated package definition. Build one with :func:`parse_package`, not directly."""

    name: PackageName
    description: str = ""
    checkpoint: CheckpointSettings = Field(default_factory=CheckpointSettings)
    max_restarts: int | None = Field(default=None, ge=0, le=1000)
    variables: dict[VariableName, Variable] = Field(default_factory=dict)
    tasks: list[Task] = Field(min_length=1)

    @model_validator(mode="after")
    def _graph(self, info: ValidationInfo) -> Self:
        # parse_package runs the graph checks itself (on raw data, so that they
        # are reported together with field errors); direct construction gets them here.
        if not (info.context or {}).get("graph_checked"):
            from orchestrator.validation import graph_issues

            issues = graph_issues(self.model_dump(mode="json"))
            if issues:
                raise ValueError("; ".join(str(issue) for issue in issues))
        return self

    def task(self, task_id: str) -> Task:
        for task in self.tasks:
            if task.id == task_id:
                return task
        raise KeyError(task_id)

    @property
    def definition_hash(self) -> str:
        """sha256 of the canonical definition; descriptions do not count."""
        body = json.dumps(_without_descriptions(self.model_dump(mode="json")), sort_keys=True)
        return hashlib.sha256(body.encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_defaults=True)


def item_key(item: ForeachItem) -> str:
    """The stable string form of a foreach item (checkpoint keys, idempotency keys)."""
    return item if isinstance(item, str) else json.dumps(item)


def _without_descriptions(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_descriptions(v) for k, v in value.items() if k != "description"}
    if isinstance(value, list):
        return [_without_descriptions(v) for v in value]
    return value


def parse_package(data: Any, *, source: str = "package") -> Package:
    """Validate a mapping into a :class:`Package`; raise :class:`PackageInvalid` listing all."""
    from orchestrator.validation import field_issues, graph_issues

    issues: list[Issue] = []
    package: Package | None = None
    if not isinstance(data, dict):
        raise PackageInvalid(
            [Issue("", f"a package is a mapping, not {type(data).__name__}")], source=source
        )
    try:
        package = Package.model_validate(data, context={"graph_checked": True})
    except ValidationError as exc:
        issues.extend(field_issues(exc, data))
    issues.extend(graph_issues(data))
    if issues or package is None:
        raise PackageInvalid(issues, source=source)
    return package


def load_package(path: str | Path) -> Package:
    """Read a YAML or JSON package file and validate it."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise PackageInvalid(
            [Issue("", f"cannot read package file: {exc.strerror}")], source=str(file)
        ) from exc
    try:
        data = json.loads(text) if file.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise PackageInvalid(
            [Issue("", f"not valid {'JSON' if file.suffix == '.json' else 'YAML'}: {exc}")],
            source=str(file),
        ) from exc
    return parse_package(data, source=str(file))
