"""Problems of a package's control flow, found on the raw mapping (reported with every other issue).

Conditions (``when:``) that do not parse (with line and column), that read a
variable that is not declared, an output of a task that is not upstream, or a
name other than ``vars``/``outputs`` (and ``event`` in a handler); event handlers
whose id is taken, that have a ``foreach``, or that depend on a normal task or
on a handler that does not come before them in their section.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from orchestrator.errors import Issue
from orchestrator.packages.conditions import ConditionError, compile_condition, references

HANDLER_SECTIONS = ("on_error", "on_success", "on_finish")

Ancestors = Callable[[dict[str, list[str]], str], set[str]]


def constraint_task(entry: Any) -> str | None:
    """The task id a ``depends_on`` entry names (a plain id or ``{task: id, ...}``), if readable."""
    if isinstance(entry, str):
        return entry
    if isinstance(entry, Mapping) and isinstance(entry.get("task"), str):
        task: str = entry["task"]
        return task
    return None


def flow_issues(
    data: Mapping[str, Any],
    graph: dict[str, list[str]],
    variables: dict[str, Any] | None,
    ancestors: Ancestors,
) -> list[Issue]:
    """Every control-flow problem of the package (``variables`` None: not checked)."""
    tasks = data.get("tasks")
    if not isinstance(tasks, list):
        return []
    issues: list[Issue] = []
    for position, task in enumerate(tasks):
        task_id = task.get("id") if isinstance(task, Mapping) else None
        if isinstance(task_id, str) and task.get("when") is not None:  # null: no condition (as dumped)
            upstream = ancestors(graph, task_id)
            issues.extend(condition_issues(task["when"], f"tasks[{position}].when", variables, upstream))
    issues.extend(_handler_issues(data, set(graph), variables))
    return issues


def condition_issues(
    text: Any, where: str, variables: dict[str, Any] | None, upstream: set[str], *, handler: bool = False
) -> list[Issue]:
    """Problems of one condition; ``upstream``: the tasks whose outputs it may read."""
    if not isinstance(text, str):
        return []  # the field check reports the type
    try:
        tree = compile_condition(text)
    except ConditionError as exc:
        return [Issue(where, str(exc))]
    roots = {"vars", "outputs", "event"} if handler else {"vars", "outputs"}
    issues: list[Issue] = []
    for ref in references(tree):
        if ref.name is None and ref.root not in roots:
            message = f"unknown name {ref.root!r}: a condition reads {', '.join(sorted(roots))}"
        elif (
            ref.root == "vars"
            and ref.name is not None
            and variables is not None
            and ref.name not in variables
        ):
            message = f"unknown variable {ref.name!r}" + _suggestion(ref.name, variables)
        elif ref.root == "outputs" and ref.name is not None and ref.name not in upstream:
            message = f"outputs.{ref.name}: task {ref.name!r} is not upstream of this task"
            message += " (add it to depends_on)" if not handler else " (no such task)"
        else:
            continue
        issue = Issue(where, message)
        if issue not in issues:
            issues.append(issue)
    return issues


def _handler_issues(
    data: Mapping[str, Any], tasks: set[str], variables: dict[str, Any] | None
) -> list[Issue]:
    issues: list[Issue] = []
    taken: dict[str, str] = {}
    for section in HANDLER_SECTIONS:
        handlers = data.get(section)
        if not isinstance(handlers, list):
            continue  # absent, or the field check reports its type
        earlier: list[str] = []
        for slot, handler in enumerate(handlers):
            if not isinstance(handler, Mapping):
                continue
            where = f"{section}[{slot}]"
            handler_id = handler.get("id")
            if isinstance(handler_id, str):
                if handler_id in tasks:
                    issues.append(Issue(f"{where}.id", f"{handler_id!r} is already a task id"))
                elif handler_id in taken:
                    issues.append(
                        Issue(
                            f"{where}.id",
                            f"duplicate handler id {handler_id!r} (first at {taken[handler_id]})",
                        )
                    )
                taken.setdefault(handler_id, where)
            if handler.get("foreach") is not None:
                issues.append(Issue(f"{where}.foreach", "an event handler runs once per event: no foreach"))
            issues.extend(_handler_dependencies(handler, where, section, earlier, tasks))
            if "when" in handler:
                issues.extend(
                    condition_issues(handler["when"], f"{where}.when", variables, tasks, handler=True)
                )
            if isinstance(handler_id, str):
                earlier.append(handler_id)
    return issues


def _handler_dependencies(
    handler: Mapping[str, Any], where: str, section: str, earlier: list[str], tasks: set[str]
) -> list[Issue]:
    depends_on = handler.get("depends_on")
    if not isinstance(depends_on, list):
        return []
    issues: list[Issue] = []
    for slot, entry in enumerate(depends_on):
        dependency = constraint_task(entry)
        if dependency is None or dependency in earlier:
            continue
        if dependency in tasks:
            message = (
                f"a handler cannot depend on the task {dependency!r}: it runs on an event, not in the graph"
            )
        else:
            message = (
                f"unknown handler {dependency!r}: a handler depends only on a handler before it in {section}"
            )
        issues.append(Issue(f"{where}.depends_on[{slot}]", message))
    return issues


def _suggestion(word: str, candidates: Iterable[object]) -> str:
    names = [c for c in candidates if isinstance(c, str)]
    close = difflib.get_close_matches(word, names, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
