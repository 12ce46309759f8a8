"""Task conditions (``when:``): CEL expressions over variables, outputs and the handler's event.

CEL (the Common Expression Language, through ``cel-python``) is chosen because it
is a language for exactly this: side-effect free, no loops, no function
definitions, no access to Python objects, and it terminates; its parser gives
the line and column of a syntax error. ``eval`` is never used. An expression
sees ``vars`` (the package variables), ``outputs`` (outputs of finished tasks)
and, in an event handler, ``event``; it must give a boolean.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from orchestrator.errors import OrchestratorError

if TYPE_CHECKING:
    import celpy
    import lark

ROOTS = ("vars", "outputs", "event")


class ConditionError(OrchestratorError):
    """A condition that does not parse, or that cannot be evaluated to a boolean."""


@dataclass(frozen=True)
class Reference:
    """``vars.x`` or ``outputs.t`` (only the first name after the root is kept)."""

    root: str
    name: str | None


@lru_cache(maxsize=1)
def _environment() -> celpy.Environment:
    """CEL's parser and evaluator, built on first use.

    Building it generates a parser from CEL's grammar, about 0.1 s of CPU: a command that
    evaluates no condition (``status``, ``events``...) does not pay it (``bench/cli.py``);
    the long-lived processes build it when they start (:func:`warm`). CEL's modules are
    imported here too, for the same reason (with their dependencies, about 0.07 s).
    """
    import celpy

    return celpy.Environment()


def warm() -> None:
    """Build the CEL environment now: a scheduler when it starts, a worker node before it forks
    its pool (every pool process inherits it instead of building it on its first condition)."""
    _environment()


@lru_cache(maxsize=512)
def compile_condition(text: str) -> lark.Tree[Any]:
    """Parse a condition; :class:`ConditionError` with line and column if it does not parse."""
    from celpy.celparser import CELParseError

    try:
        return _environment().compile(text)
    except CELParseError as exc:
        line, column = getattr(exc, "line", None), getattr(exc, "column", None)
        where = f" at line {line}, column {column}" if line is not None else ""
        first = str(exc.args[0]).splitlines()[0] if exc.args else str(exc)
        raise ConditionError(f"condition does not parse{where}: {first}") from exc


_MACROS = {"all", "exists", "exists_one", "map", "filter"}


def references(tree: lark.Tree[Any]) -> Iterator[Reference]:
    """The top-level names a condition reads, with the member after ``vars``/``outputs``/``event``.

    The variables a macro binds (``i`` in ``vars.l.exists(i, i > 2)``) are not references.
    """
    bound = set(_bound(tree))
    for node in tree.iter_subtrees():
        if node.data == "member_dot" and (root := _ident(node.children[0])) is not None:
            yield Reference(root, str(node.children[1]))
        elif node.data == "ident" and node.children and str(node.children[0]) not in bound:
            yield Reference(str(node.children[0]), None)


def _bound(tree: lark.Tree[Any]) -> Iterator[str]:
    import lark

    for node in tree.iter_subtrees():
        if node.data == "member_dot_arg" and str(node.children[1]) in _MACROS and len(node.children) > 2:
            arguments = node.children[2]
            first = arguments.children[0] if isinstance(arguments, lark.Tree) and arguments.children else None
            name = _ident(_single(first))
            if name is not None:
                yield name


def _single(node: Any) -> Any:
    """Descend through one-child nodes (``expr -> ... -> member``)."""
    import lark

    while isinstance(node, lark.Tree) and len(node.children) == 1 and node.data not in ("member", "ident"):
        node = node.children[0]
    return node


def _ident(node: Any) -> str | None:
    """The identifier of ``member -> primary -> ident`` (else None)."""
    import lark

    while isinstance(node, lark.Tree) and node.data in ("member", "primary") and len(node.children) == 1:
        node = node.children[0]
    if isinstance(node, lark.Tree) and node.data == "ident" and node.children:
        return str(node.children[0])
    return None


def evaluate(
    text: str,
    variables: Mapping[str, Any],
    outputs: Mapping[str, Any],
    event: Mapping[str, Any] | None = None,
) -> bool:
    """The value of a condition; :class:`ConditionError` if it fails or is not a boolean."""
    import celpy
    from celpy.adapter import json_to_cel
    from celpy.evaluation import CELEvalError

    program = _environment().program(compile_condition(text))
    activation = {
        "vars": json_to_cel(dict(variables)),
        "outputs": json_to_cel(dict(outputs)),
        "event": json_to_cel(dict(event or {})),
    }
    try:
        value = program.evaluate(activation)
    except CELEvalError as exc:
        raise ConditionError(f"condition {text!r} failed: {exc.args[0] if exc.args else exc}") from exc
    if isinstance(value, CELEvalError):
        raise ConditionError(f"condition {text!r} failed: {value.args[0] if value.args else value}")
    if not isinstance(value, celpy.celtypes.BoolType | bool):
        raise ConditionError(f"condition {text!r} gave {type(value).__name__}, not a boolean")
    return bool(value)
