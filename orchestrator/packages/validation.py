"""Reading and validating packages, reporting every problem at once, each with its field path.

Field problems come from pydantic and are rewritten into short messages;
graph problems (duplicate ids, unknown dependencies, cycles, templates naming
what is not there) are found on the raw mapping by :mod:`orchestrator.packages.graph`,
so they are reported even when some fields are also wrong.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from orchestrator.errors import Issue, PackageInvalid
from orchestrator.packages.etl import Connection, CopySpec, SqlSpec, etl_issues
from orchestrator.packages.graph import graph_issues, suggestion
from orchestrator.packages.model import CheckpointSettings, Package, Task, Variable

_PATTERN_HINTS = {
    "name": "a package name is [a-z0-9][a-z0-9_-]{0,63}",
    "id": "a task id is 1-64 characters of [a-z0-9_-]",
    "depends_on": "a task id is 1-64 characters of [a-z0-9_-]",
    "python": "a python task is 'package.module:function'",
    "writes": "a variable name is [A-Za-z_][A-Za-z0-9_]{0,63}",
}


def format_path(loc: Iterable[str | int]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def _data_path(loc: tuple[str | int, ...], data: Any) -> tuple[list[str | int], Any]:
    """Keep the parts of a pydantic ``loc`` that index into ``data`` (drops union labels)."""
    kept: list[str | int] = []
    current: Any = data
    for position, part in enumerate(loc):
        if _has(current, part):
            current = current[part]
        elif position != len(loc) - 1 or not isinstance(current, Mapping | list):
            continue  # a union label (after a scalar value it is one too: nothing is indexed there)
        kept.append(part)
    return kept, current


def _has(container: Any, part: str | int) -> bool:
    if isinstance(container, Mapping):
        return part in container
    return isinstance(container, list) and isinstance(part, int) and 0 <= part < len(container)


_EXPECTED = {
    "model_type": "a mapping",
    "dict_type": "a mapping",
    "list_type": "a list",
    "string_type": "a string",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
}

_TYPE_NAMES = {
    "dict": "a mapping",
    "list": "a list",
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "a boolean",
    "NoneType": "null",
}


def describe_type(value: Any) -> str:
    """The kind of a YAML/JSON value in words ("a mapping", "null"...)."""
    name = type(value).__name__
    return _TYPE_NAMES.get(name, name)


def _shown(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _message(error: ErrorDetails, path: list[str | int], data: Any) -> str:
    kind = error["type"]
    last = path[-1] if path else ""
    if kind == "extra_forbidden":
        return f"unknown key {last!r}" + suggestion(str(last), _known_keys(path, data))
    if kind == "missing":
        return f"required key {last!r} is missing"
    if kind == "too_short" and last == "tasks":
        return "a package needs at least one task"
    return _value_message(error, path)


def _value_message(error: ErrorDetails, path: list[str | int]) -> str:
    """A short message for a value of the wrong type or form, showing the value."""
    kind = error["type"]
    given = error["input"]
    if kind == "string_pattern_mismatch":
        field = next((p for p in reversed(path) if isinstance(p, str)), "")
        hint = _PATTERN_HINTS.get(str(field), "it does not match the allowed pattern")
        return f"bad value {_shown(given)}: {hint}"
    if kind in _EXPECTED:
        shown = "" if given is None else " " + _shown(given)
        return f"expected {_EXPECTED[kind]}, got {describe_type(given)}{shown}"
    if kind == "enum":
        expected = (error.get("ctx") or {}).get("expected", "")
        return f"bad value {_shown(given)}: expected one of {expected}"
    message = error["msg"].removeprefix("Value error, ")
    if message.startswith("Input should"):
        return f"{_shown(given)} should" + message.removeprefix("Input should")
    return message


def _known_keys(path: list[str | int], data: Any) -> list[str]:
    if len(path) < 2:
        return list(Package.model_fields)
    models: dict[str, type[BaseModel]] = {
        "tasks": Task,
        "variables": Variable,
        "checkpoint": CheckpointSettings,
        "connections": Connection,
        "on_error": Task,
        "on_success": Task,
        "on_finish": Task,
    }
    model = models.get(str(path[0]))
    if model is Task and len(path) > 3 and path[2] in ("sql", "copy"):
        model = _etl_model(path[2:-1])
    return [f.alias or n for n, f in model.model_fields.items()] if model is not None else []


def _etl_model(path: list[str | int]) -> type[BaseModel] | None:
    """The model of an ETL task's nested mapping (``copy.source``...), for "did you mean"."""
    model: type[BaseModel] | None = SqlSpec if path[0] == "sql" else CopySpec
    for part in path[1:]:
        field = model.model_fields.get(str(part)) if model is not None else None
        annotation = getattr(field, "annotation", None)
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return model


def field_issues(exc: ValidationError, data: Any) -> list[Issue]:
    """Turn pydantic's errors into issues (graph problems are graph_issues' job)."""
    issues: list[Issue] = []
    for error in exc.errors():
        issue = _key_issue(error) or _field_issue(error, data)
        if issue not in issues:
            issues.append(issue)
    return issues


def _field_issue(error: ErrorDetails, data: Any) -> Issue:
    path, _ = _data_path(tuple(error["loc"]), data)
    return Issue(format_path(path), _message(error, path, data))


def _key_issue(error: ErrorDetails) -> Issue | None:
    """An error about a mapping key itself (pydantic marks it ``[key]`` or ``invalid_key``)."""
    loc = tuple(error["loc"])
    if error["type"] == "invalid_key":
        # loc ends with the key itself, not an index: say so rather than "[5]"
        return Issue(format_path(loc[:-1]), f"key {loc[-1]!r} is not a string")
    if not loc or loc[-1] != "[key]":
        return None
    where = format_path(loc[:-2]) if len(loc) > 1 else ""
    key = loc[-2] if len(loc) > 1 else ""
    if len(loc) == 3 and loc[0] == "variables":
        return Issue(
            f"variables.{key}",
            f"bad variable name {key!r}: expected [A-Za-z_][A-Za-z0-9_]{{0,63}}",
        )
    return Issue(where, f"key {key!r} is not a string")


def parse_package(data: Any, *, source: str = "package") -> Package:
    """Validate a mapping into a :class:`Package`; raise :class:`PackageInvalid` listing all."""
    issues: list[Issue] = []
    package: Package | None = None
    if not isinstance(data, dict):
        raise PackageInvalid([Issue("", f"a package is a mapping, not {describe_type(data)}")], source=source)
    try:
        package = Package.model_validate(data, context={"graph_checked": True})
    except ValidationError as exc:
        issues.extend(field_issues(exc, data))
    issues.extend(graph_issues(data))
    issues.extend(etl_issues(data))
    if issues or package is None:
        raise PackageInvalid(issues, source=source)
    return package


def load_package(path: str | Path) -> Package:
    """Read a YAML or JSON (``.json``) package file and validate it.

    A key given twice in one mapping is an error (both parsers would otherwise
    keep the last one silently).
    """
    file = Path(path)
    kind = "JSON" if file.suffix.lower() == ".json" else "YAML"
    try:
        data = _parse_text(file.read_text(encoding="utf-8"), kind)
    except OSError as exc:
        message = f"cannot read package file: {exc.strerror or exc}"
    except UnicodeDecodeError as exc:
        message = f"package file is not UTF-8 text ({exc.reason} at byte {exc.start})"
    except (yaml.YAMLError, ValueError) as exc:
        message = f"not valid {kind}: {exc}"
    except RecursionError:
        message = f"not valid {kind}: nested too deeply"
    else:
        return parse_package(data, source=str(file))
    raise PackageInvalid([Issue("", message)], source=str(file))


def _parse_text(text: str, kind: str) -> Any:
    if kind == "JSON":
        return json.loads(text, object_pairs_hook=_unique_keys)
    data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    _check_expansion(data, set(), [_MAX_YAML_VALUES])
    return data


_MAX_YAML_VALUES = 1_000_000


def _check_expansion(value: Any, ancestors: set[int], budget: list[int]) -> None:
    """Refuse what YAML aliases make of a small file: a value inside itself, or a huge tree.

    Aliases share objects, so ``a: &a [*a]`` is recursive and nine levels of nine
    aliases ("billion laughs") are 9**9 values to validate.
    """
    budget[0] -= 1
    if budget[0] < 0:
        raise ValueError(f"more than {_MAX_YAML_VALUES} values once aliases are expanded")
    if not isinstance(value, dict | list):
        return
    if id(value) in ancestors:
        raise ValueError("a value contains itself (recursive alias)")
    ancestors.add(id(value))
    for item in value.values() if isinstance(value, dict) else value:
        _check_expansion(item, ancestors, budget)
    ancestors.discard(id(value))


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise ValueError(f"duplicate key(s) in one object: {', '.join(map(repr, repeated))}")
    return dict(pairs)


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: list[Any] = []
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # "<<: *base" then overriding a merged key is allowed
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r}",
                    key_node.start_mark,
                )
            seen.append(key)
        return super().construct_mapping(node, deep=deep)
