"""``{{ vars.x }}`` and ``{{ outputs.task.key }}`` substitution in task params and commands.

Deliberately not Jinja: a package is untrusted input, so templates can only
look values up, never run code. A string that is exactly one expression keeps
the value's type (``"{{ vars.rows }}"`` gives an int); inside a longer string
the value is formatted (strings as-is, everything else as JSON).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from orchestrator.errors import OrchestratorError

# The inner part may not contain "}}": otherwise "{{ vars.a }}{{ vars.b }}" would
# fullmatch as one expression "vars.a }}{{ vars.b".
EXPRESSION = re.compile(r"\{\{\s*((?:(?!\}\}).)*?)\s*\}\}")
REFERENCE = re.compile(r"(vars|outputs)((?:\.[A-Za-z0-9_-]+)+)")


class TemplateError(OrchestratorError):
    """A template that names something that does not exist, or is not a lookup."""


@dataclass(frozen=True)
class Reference:
    """A parsed lookup: ``kind`` is ``vars`` or ``outputs``; ``path`` the dotted names."""

    kind: str
    path: tuple[str, ...]

    def __str__(self) -> str:
        return ".".join((self.kind, *self.path))


def parse_expression(expression: str) -> Reference:
    match = REFERENCE.fullmatch(expression)
    if match is None:
        raise TemplateError(
            f"unsupported template expression {{{{ {expression} }}}}: "
            "only {{ vars.NAME }} and {{ outputs.TASK[.KEY...] }} are allowed"
        )
    return Reference(match.group(1), tuple(match.group(2)[1:].split(".")))


def references(value: Any) -> list[Reference]:
    """Every reference in ``value`` (strings, lists and dicts, recursively)."""
    found: list[Reference] = []
    if isinstance(value, str):
        found.extend(parse_expression(m.group(1)) for m in EXPRESSION.finditer(value))
    elif isinstance(value, Mapping):
        for item in value.values():
            found.extend(references(item))
    elif isinstance(value, list | tuple):
        for item in value:
            found.extend(references(item))
    return found


def lookup(reference: Reference, variables: Mapping[str, Any], outputs: Mapping[str, Any]) -> Any:
    current: Any = variables if reference.kind == "vars" else outputs
    for depth, name in enumerate(reference.path):
        if not isinstance(current, Mapping) or name not in current:
            where = ".".join((reference.kind, *reference.path[:depth])) or reference.kind
            raise TemplateError(f"{{{{ {reference} }}}}: {where} has no {name!r}")
        current = current[name]
    return current


def render(
    value: Any,
    variables: Mapping[str, Any],
    outputs: Mapping[str, Any],
    *,
    quote: Callable[[str], str] | None = None,
) -> Any:
    """Substitute every expression in ``value``; ``quote`` escapes values spliced into text."""
    if isinstance(value, Mapping):
        return {k: render(v, variables, outputs, quote=quote) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [render(v, variables, outputs, quote=quote) for v in value]
    if not isinstance(value, str) or "{{" not in value:
        return value
    whole = EXPRESSION.fullmatch(value)
    if whole is not None and quote is None:
        return lookup(parse_expression(whole.group(1)), variables, outputs)

    def substitute(match: re.Match[str]) -> str:
        found = lookup(parse_expression(match.group(1)), variables, outputs)
        text = found if isinstance(found, str) else json.dumps(found)
        return quote(text) if quote is not None else text

    return EXPRESSION.sub(substitute, value)
