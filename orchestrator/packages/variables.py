"""Typed package variables: values from the command line, the environment and defaults."""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Mapping
from typing import Any

from orchestrator.errors import VariableInvalid
from orchestrator.packages.kinds import VariableType
from orchestrator.packages.model import Package, Variable

MAX_VARIABLE_BYTES = 64 * 1024
ENV_PREFIX = "ORCHESTRATOR_VAR_"
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def parse_assignments(pairs: list[str]) -> dict[str, str]:
    """Split ``k=v`` strings from ``--var``; raise :class:`VariableInvalid` on a malformed one."""
    values: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise VariableInvalid(f"--var {pair!r}: expected NAME=VALUE")
        values[name.strip()] = value
    return values


def convert(name: str, declared: Variable, value: Any, *, from_text: bool = False) -> Any:
    """Check ``value`` against the declared type; ``from_text`` parses command-line strings.

    Error messages never show the value of a ``sensitive`` variable.
    """
    shown = "the value" if declared.sensitive else repr(value)
    if isinstance(value, str):
        # checked before parsing too, so that a huge string is never parsed
        _check_size(name, len(value.encode()))
        if from_text and declared.type is not VariableType.STR:
            value = _from_text(name, declared.type, value, shown)
    if not declared.type.accepts(value):
        raise VariableInvalid(f"variable {name!r}: {shown} is not of type {declared.type.value}")
    if declared.type is VariableType.FLOAT:
        value = float(value)
    _check_size(name, len(json.dumps(value, ensure_ascii=False).encode()))
    return value


def _check_size(name: str, size: int) -> None:
    if size > MAX_VARIABLE_BYTES:
        raise VariableInvalid(
            f"variable {name!r} is {size} bytes, over the limit of {MAX_VARIABLE_BYTES} bytes"
        )


def _from_text(name: str, kind: VariableType, text: str, shown: str) -> Any:
    try:
        if kind is VariableType.INT:
            return int(text)
        if kind is VariableType.FLOAT:
            return float(text)
        if kind is VariableType.BOOL:
            lowered = text.strip().lower()
            if lowered in _TRUE | _FALSE:
                return lowered in _TRUE
            raise ValueError(text)
        return json.loads(text)
    except (ValueError, RecursionError):
        raise VariableInvalid(f"variable {name!r}: cannot read {shown} as {kind.value}") from None


def resolve(
    package: Package,
    given: Mapping[str, Any],
    *,
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Defaults, then ``ORCHESTRATOR_VAR_<NAME>`` from the environment, then ``given``.

    Every problem is reported at once. Required variables that are still
    missing are *not* an error here: a resumed run may restore them from its
    checkpoint (see :func:`missing_required`).
    """
    environ = os.environ if environ is None else environ
    problems: list[str] = []
    for name in given:
        if name not in package.variables:
            close = difflib.get_close_matches(name, list(package.variables), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"unknown variable {name!r}{hint}")
    values: dict[str, Any] = {}
    for name, declared in package.variables.items():
        raw: Any = given.get(name, environ.get(ENV_PREFIX + name))
        from_text = raw is not None
        if raw is None and not declared.required:
            raw = declared.default
        if raw is None:
            continue
        try:
            values[name] = convert(name, declared, raw, from_text=from_text)
        except VariableInvalid as exc:
            problems.append(str(exc))
    if problems:
        raise VariableInvalid("; ".join(problems))
    return values


def missing_required(package: Package, values: Mapping[str, Any]) -> None:
    """Raise :class:`VariableInvalid` naming every required variable without a value."""
    missing = [n for n, v in package.variables.items() if v.required and n not in values]
    if missing:
        raise VariableInvalid(
            "required variable(s) without a value: "
            + ", ".join(missing)
            + f" (give them with --var NAME=VALUE or {ENV_PREFIX}NAME)"
        )
