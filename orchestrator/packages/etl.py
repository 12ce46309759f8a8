"""The ETL part of the package model: ``connections``, ``sql:`` tasks and ``copy:`` tasks.

The worker side lives in :mod:`workers.etl`; docs/etl.md describes the format
and the copy's exactly-once guarantee. :func:`etl_issues` finds the problems
that involve more than one field (a task naming an unknown connection, a
password written in clear), on the raw mapping like the graph checks, so they
are reported together with field errors.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Self

from pydantic import BaseModel, ConfigDict, Field, Strict, StringConstraints, model_validator

from orchestrator.errors import Issue
from orchestrator.packages.graph import suggestion
from orchestrator.packages.templating import EXPRESSION, REFERENCE, TemplateError, references

ConnectionName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z][A-Za-z0-9_]{0,63}$")]
ColumnName = Annotated[str, StringConstraints(min_length=1, max_length=128)]
TableName = Annotated[
    str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?$")
]
TransformTarget = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"),
]
StrictInt = Annotated[int, Strict()]

DEFAULT_BATCH_SIZE = 10_000
MAX_BATCH_SIZE = 1_000_000
PASSWORD_ENV = "ORCHESTRATOR_CONN_{name}_PASSWORD"  # noqa: S105 - a variable name, not a password


def password_variable(name: str) -> str:
    """The environment variable that may hold connection ``name``'s password."""
    return PASSWORD_ENV.format(name=name.upper())


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Connection(_Strict):
    """A database the package's ``sql`` and ``copy`` tasks use: a SQLAlchemy URL, templated.

    The password comes from ``password`` (a ``{{ vars.x }}`` naming a sensitive
    variable) or from ``ORCHESTRATOR_CONN_<NAME>_PASSWORD`` on the worker; never from
    the URL itself, which is stored with the package and shown in its definition.
    """

    url: Annotated[str, StringConstraints(min_length=1)]
    password: str | None = None


class SqlSpec(_Strict):
    """``sql:``: statements run in one transaction; ``params`` are bound, never pasted in."""

    connection: ConnectionName
    statements: list[Annotated[str, StringConstraints(min_length=1)]] = Field(min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)


class CopySource(_Strict):
    """Where a copy reads: a ``table`` or a ``query``, paged in the order of ``key``."""

    connection: ConnectionName
    table: TableName | None = None
    query: Annotated[str, StringConstraints(min_length=1)] | None = None
    key: list[ColumnName] = Field(min_length=1)

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.table is None) == (self.query is None):
            raise ValueError("a copy source needs exactly one of 'table' and 'query'")
        if len(set(self.key)) != len(self.key):
            raise ValueError("'key' names a column twice")
        return self


class CopyDestination(_Strict):
    """Where a copy writes: a table that must exist, written only by this copy while it runs."""

    connection: ConnectionName
    table: TableName


class CopySpec(_Strict):
    """``copy:``: a keyset-paged table copy, each batch committed with its cursor (docs/etl.md)."""

    source: CopySource
    destination: CopyDestination
    batch_size: StrictInt = Field(default=DEFAULT_BATCH_SIZE, ge=1, le=MAX_BATCH_SIZE)
    transform: TransformTarget | None = None


def etl_issues(data: Any) -> list[Issue]:
    """Connections that tasks name but the package does not declare, and passwords in clear."""
    if not isinstance(data, Mapping):
        return []
    connections = data.get("connections") or {}
    if not isinstance(connections, Mapping):
        return []
    variables = data.get("variables") or {}
    issues = [
        issue
        for name, connection in connections.items()
        for issue in _connection_issues(str(name), connection, variables)
    ]
    tasks = data.get("tasks")
    for position, task in enumerate(tasks if isinstance(tasks, list) else []):
        if isinstance(task, Mapping):
            issues.extend(_reference_issues(position, task, connections))
    return issues


def _connection_issues(name: str, connection: Any, variables: Any) -> list[Issue]:
    if not isinstance(connection, Mapping):
        return []
    path = f"connections.{name}"
    issues: list[Issue] = []
    url = connection.get("url")
    if isinstance(url, str) and "{{" not in url and re.search(r"://[^/@]*:[^/@]*@", url):
        issues.append(
            Issue(
                f"{path}.url",
                f"the URL holds a password in clear: give it as 'password' from a sensitive "
                f"variable or in {password_variable(name)}",
            )
        )
    password = connection.get("password")
    if isinstance(password, str):
        issues.extend(_password_issues(f"{path}.password", name, password, variables))
    for field in ("url", "password"):
        issues.extend(_template_issues(f"{path}.{field}", connection.get(field), variables))
    return issues


def _template_issues(path: str, value: Any, variables: Any) -> list[Issue]:
    """A connection is opened before any task output exists: only declared variables."""
    if not isinstance(value, str):
        return []
    try:
        found = references(value)
    except TemplateError as exc:
        return [Issue(path, str(exc))]
    issues = []
    for reference in found:
        if reference.kind != "vars" or len(reference.path) != 1:
            issues.append(
                Issue(path, f"{{{{ {reference} }}}}: a connection may only use {{{{ vars.NAME }}}}")
            )
        elif isinstance(variables, Mapping) and reference.path[0] not in variables:
            issues.append(
                Issue(
                    path, f"unknown variable {reference.path[0]!r}" + suggestion(reference.path[0], variables)
                )
            )
    return issues


def _password_issues(path: str, name: str, password: str, variables: Any) -> list[Issue]:
    whole = EXPRESSION.fullmatch(password.strip())
    reference = REFERENCE.fullmatch(whole.group(1)) if whole else None
    if reference is None or reference.group(1) != "vars":
        return [
            Issue(
                path,
                f"a password is '{{{{ vars.NAME }}}}' naming a sensitive variable (or is left out "
                f"and read from {password_variable(name)}), never written in the package",
            )
        ]
    variable = reference.group(2)[1:]
    declared = variables.get(variable) if isinstance(variables, Mapping) else None
    if isinstance(declared, Mapping) and declared.get("sensitive") is not True:
        return [Issue(path, f"variable {variable!r} holds a password: declare it 'sensitive: true'")]
    return []  # an undeclared variable is reported by _template_issues


def _reference_issues(position: int, task: Mapping[str, Any], connections: Mapping[Any, Any]) -> list[Issue]:
    issues = []
    for kind, parts in (("sql", ((),)), ("copy", (("source",), ("destination",)))):
        spec = task.get(kind)
        if not isinstance(spec, Mapping):
            continue
        for part in parts:
            holder: Any = spec
            for key in part:
                holder = holder.get(key) if isinstance(holder, Mapping) else None
            name = holder.get("connection") if isinstance(holder, Mapping) else None
            if isinstance(name, str) and name not in connections:
                path = ".".join((f"tasks[{position}]", kind, *part, "connection"))
                known = ", ".join(sorted(map(str, connections))) or "none declared"
                issues.append(
                    Issue(path, f"unknown connection {name!r} ({known})" + suggestion(name, connections))
                )
    return issues
