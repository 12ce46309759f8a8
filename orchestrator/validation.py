"""Package validation that reports every problem at once, each with its field path.

Field problems come from pydantic and are rewritten into short messages;
graph problems (duplicate ids, unknown dependencies, cycles, templates naming
what is not there) are found on the raw mapping, so they are reported even
when some fields are also wrong.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from orchestrator.errors import Issue
from orchestrator.templating import TemplateError, references

_PATTERN_HINTS = {
    "name": "a package name is [a-z0-9][a-z0-9_-]{0,63}",
    "id": "a task id is 1-64 characters of [a-z0-9_-]",
    "depends_on": "a task id is 1-64 characters of [a-z0-9_-]",
    "python": "a python task is 'package.module:function'",
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
        elif position != len(loc) - 1:
            continue
        kept.append(part)
    return kept, current


def _has(container: Any, part: str | int) -> bool:
    if isinstance(container, Mapping):
        return part in container
    return isinstance(container, list) and isinstance(part, int) and 0 <= part < len(container)


def _message(error: ErrorDetails, path: list[str | int], data: Any) -> str:
    kind = error["type"]
    last = path[-1] if path else ""
    if kind == "extra_forbidden":
        return f"unknown key {last!r}" + _suggestion(str(last), _known_keys(path, data))
    if kind == "missing":
        return f"required key {last!r} is missing"
    if kind == "string_pattern_mismatch":
        field = next((p for p in reversed(path) if isinstance(p, str)), "")
        hint = _PATTERN_HINTS.get(str(field), "it does not match the allowed pattern")
        return f"bad value {error['input']!r}: {hint}"
    message = error["msg"]
    return message.removeprefix("Value error, ")


def _known_keys(path: list[str | int], data: Any) -> list[str]:
    from orchestrator.package import CheckpointSettings, Package, Task, Variable

    if len(path) < 2:
        return list(Package.model_fields)
    models: dict[str, type[BaseModel]] = {
        "tasks": Task,
        "variables": Variable,
        "checkpoint": CheckpointSettings,
    }
    model = models.get(str(path[0]))
    return list(model.model_fields) if model is not None else []


def _suggestion(word: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def field_issues(exc: ValidationError, data: Any) -> list[Issue]:
    """Turn pydantic's errors into issues (graph problems are graph_issues' job)."""
    issues: list[Issue] = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        if loc and loc[-1] == "[key]":
            issues.append(
                Issue(
                    format_path(loc[:-1]), "bad variable name: expected [A-Za-z_][A-Za-z0-9_]{0,63}"
                )
            )
            continue
        path, _ = _data_path(loc, data)
        issue = Issue(format_path(path), _message(error, path, data))
        if issue not in issues:
            issues.append(issue)
    return issues


def graph_issues(data: Any) -> list[Issue]:
    """Problems of the task graph and its templates, found on the raw mapping."""
    tasks = data.get("tasks") if isinstance(data, Mapping) else None
    if not isinstance(tasks, list):
        return []
    issues: list[Issue] = []
    index = _task_index(tasks, issues)
    graph = _dependencies(tasks, index, issues)
    issues.extend(_cycles(graph))
    variables = data.get("variables")
    names = set(variables) if isinstance(variables, Mapping) else set()
    issues.extend(_template_issues(tasks, graph, names))
    return issues


def _task_index(tasks: list[Any], issues: list[Issue]) -> dict[str, int]:
    index: dict[str, int] = {}
    for position, task in enumerate(tasks):
        task_id = task.get("id") if isinstance(task, Mapping) else None
        if not isinstance(task_id, str):
            continue
        if task_id in index:
            issues.append(
                Issue(
                    f"tasks[{position}].id",
                    f"duplicate task id {task_id!r} (first at tasks[{index[task_id]}])",
                )
            )
        else:
            index[task_id] = position
    return index


def _dependencies(
    tasks: list[Any], index: dict[str, int], issues: list[Issue]
) -> dict[str, list[str]]:
    graph: dict[str, list[str]] = {task_id: [] for task_id in index}
    for position, task in enumerate(tasks):
        if not isinstance(task, Mapping) or index.get(task.get("id")) != position:  # type: ignore[arg-type]
            continue
        depends_on = task.get("depends_on") or []
        if not isinstance(depends_on, list):
            continue
        for slot, dependency in enumerate(depends_on):
            if not isinstance(dependency, str):
                continue
            if dependency in index:
                graph[task["id"]].append(dependency)
            else:
                issues.append(
                    Issue(
                        f"tasks[{position}].depends_on[{slot}]",
                        f"unknown task {dependency!r}" + _suggestion(dependency, index),
                    )
                )
    return graph


def _cycles(graph: dict[str, list[str]]) -> list[Issue]:
    """One issue per strongly connected component that holds a cycle, naming the cycle."""
    issues: list[Issue] = []
    for component in _strongly_connected(graph):
        start = min(component)
        if len(component) == 1 and start not in graph[start]:
            continue
        cycle = _cycle_path(graph, start, component)
        issues.append(
            Issue(
                "tasks", "dependency cycle: " + " -> ".join(cycle) + " (each depends on the next)"
            )
        )
    return issues


def _strongly_connected(graph: dict[str, list[str]]) -> list[set[str]]:
    """Tarjan's algorithm, iterative so that deep graphs cannot overflow the stack."""
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []
    for root in sorted(graph):
        if root in order:
            continue
        work: list[tuple[str, int]] = [(root, 0)]
        while work:
            node, child = work.pop()
            if child == 0:
                order[node] = low[node] = len(order)
                stack.append(node)
                on_stack.add(node)
            successors = graph[node]
            if child < len(successors):
                work.append((node, child + 1))
                nxt = successors[child]
                if nxt not in order:
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], order[nxt])
                continue
            if low[node] == order[node]:
                component: set[str] = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                components.append(component)
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return components


def _cycle_path(graph: dict[str, list[str]], start: str, component: set[str]) -> list[str]:
    """A path start -> ... -> start inside ``component`` (breadth-first, so the shortest)."""
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for node in frontier:
            for nxt in sorted(graph[node]):
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if nxt in component and nxt not in previous:
                    previous[nxt] = node
                    following.append(nxt)
        frontier = following
    return [start, start]


def _ancestors(graph: dict[str, list[str]], task_id: str) -> set[str]:
    seen: set[str] = set()
    pending = list(graph.get(task_id, []))
    while pending:
        node = pending.pop()
        if node not in seen:
            seen.add(node)
            pending.extend(graph.get(node, []))
    return seen


def _template_issues(
    tasks: list[Any], graph: dict[str, list[str]], variables: set[str]
) -> list[Issue]:
    issues: list[Issue] = []
    for position, task in enumerate(tasks):
        if not isinstance(task, Mapping):
            continue
        task_id = task.get("id")
        upstream = _ancestors(graph, task_id) if isinstance(task_id, str) else set()
        for field in ("params", "shell", "foreach"):
            where = f"tasks[{position}].{field}"
            try:
                found = references(task.get(field))
            except TemplateError as exc:
                issues.append(Issue(where, str(exc)))
                continue
            for ref in found:
                name = ref.path[0]
                if ref.kind == "vars" and name not in variables:
                    issues.append(
                        Issue(
                            where,
                            f"{{{{ {ref} }}}}: unknown variable {name!r}"
                            + _suggestion(name, variables),
                        )
                    )
                elif ref.kind == "outputs" and name not in upstream:
                    issues.append(
                        Issue(
                            where,
                            f"{{{{ {ref} }}}}: task {name!r} is not upstream of this task "
                            "(add it to depends_on)",
                        )
                    )
    return issues
