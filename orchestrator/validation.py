"""Package validation that reports every problem at once, each with its field path.

Field problems come from pydantic and are rewritten into short messages;
graph problems (duplicate ids, unknown dependencies, cycles, templates naming
what is not there) are found on the raw mapping, so they are reported even
when some fields are also wrong.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from orchestrator.errors import Issue
from orchestrator.templating import EXPRESSION, TemplateError, parse_expression

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
        return f"unknown key {last!r}" + _suggestion(str(last), _known_keys(path, data))
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


def _suggestion(word: str, candidates: Iterable[object]) -> str:
    names = [c for c in candidates if isinstance(c, str)]  # YAML keys may be numbers
    close = difflib.get_close_matches(word, names, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


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


def graph_issues(data: Any) -> list[Issue]:
    """Problems of the task graph and its templates, found on the raw mapping."""
    tasks = data.get("tasks") if isinstance(data, Mapping) else None
    if not isinstance(tasks, list):
        return []
    issues: list[Issue] = []
    index = _task_index(tasks, issues)
    graph = _dependencies(tasks, index, issues)
    issues.extend(_cycles(graph, index))
    variables = data.get("variables", {})
    # variables that are not a mapping are already an error: no "unknown variable" noise
    declared = dict(variables) if isinstance(variables, Mapping) else None
    issues.extend(_template_issues(tasks, graph, declared))
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


def _dependencies(tasks: list[Any], index: dict[str, int], issues: list[Issue]) -> dict[str, list[str]]:
    graph: dict[str, list[str]] = {task_id: [] for task_id in index}
    for position, task in enumerate(tasks):
        task_id = task.get("id") if isinstance(task, Mapping) else None
        if not isinstance(task_id, str) or index.get(task_id) != position:
            continue
        depends_on = task.get("depends_on") or []
        if not isinstance(depends_on, list):
            continue
        for slot, dependency in enumerate(depends_on):
            if not isinstance(dependency, str):
                continue
            if dependency == task_id:
                issues.append(
                    Issue(
                        f"tasks[{position}].depends_on[{slot}]",
                        f"task {task_id!r} depends on itself",
                    )
                )
            elif dependency in index:
                graph[task_id].append(dependency)
            else:
                issues.append(
                    Issue(
                        f"tasks[{position}].depends_on[{slot}]",
                        f"unknown task {dependency!r}" + _suggestion(dependency, index),
                    )
                )
    return graph


def _cycles(graph: dict[str, list[str]], index: dict[str, int]) -> list[Issue]:
    """One issue per strongly connected component that holds a cycle, naming the cycle.

    The path is the ``depends_on`` of the cycle's first task (in file order);
    self-dependencies are reported by :func:`_dependencies` and are not in ``graph``.
    """
    issues: list[Issue] = []
    for component in _strongly_connected(graph):
        if len(component) == 1:
            continue
        start = min(component, key=index.__getitem__)
        cycle = _cycle_path(graph, start, component)
        issues.append(
            Issue(
                f"tasks[{index[start]}].depends_on",
                "dependency cycle: " + " -> ".join(cycle) + " (each depends on the next)",
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
    tasks: list[Any], graph: dict[str, list[str]], variables: dict[str, Any] | None
) -> list[Issue]:
    """Templates that are not lookups or name an unknown variable or a non-upstream task.

    ``variables`` is None when the package's variables are unreadable (then
    variable names are not checked).
    """
    issues: list[Issue] = []
    for position, task in enumerate(tasks):
        if not isinstance(task, Mapping):
            continue
        task_id = task.get("id")
        upstream = _ancestors(graph, task_id) if isinstance(task_id, str) else set()
        for field in ("params", "shell", "foreach"):
            for where, text in _strings(task.get(field), f"tasks[{position}].{field}"):
                issues.extend(_reference_issues(where, text, upstream, variables))
        issues.extend(_foreach_type_issues(task, position, variables))
        issues.extend(_quoted_in_shell(task.get("shell"), position))
    return issues


_QUOTE_NAMES = {"'": "single", '"': "double"}


def _quoted_in_shell(command: Any, position: int) -> list[Issue]:
    """``'{{ vars.x }}'`` or ``"{{ vars.x }}"`` in a shell command.

    Values are spliced in already quoted (``shlex.quote``); inside the author's
    own quotes that quoting is undone, and ``$(...)`` in a value would run.
    """
    if not isinstance(command, str):
        return []
    issues: list[Issue] = []
    quote: str | None = None
    at = 0
    while at < len(command):
        match = EXPRESSION.match(command, at)
        if match is not None:
            if quote is not None:
                issues.append(
                    Issue(
                        f"tasks[{position}].shell",
                        f"{match.group(0)} is inside {_QUOTE_NAMES[quote]} quotes: values are shell-quoted "
                        "for you, and inside quotes a value could run commands; remove the quotes",
                    )
                )
            at = match.end()
            continue
        char = command[at]
        if char == "\\" and quote != "'":
            at += 1  # the next character is escaped
        elif quote is None and char in "'\"":
            quote = char
        elif char == quote:
            quote = None
        at += 1
    return issues


def _strings(value: Any, where: str) -> Iterator[tuple[str, str]]:
    """Every string inside ``value`` with its path (mapping keys are not templated)."""
    if isinstance(value, str):
        yield where, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _strings(item, f"{where}.{key}")
    elif isinstance(value, list):
        for slot, item in enumerate(value):
            yield from _strings(item, f"{where}[{slot}]")


def _reference_issues(
    where: str, text: str, upstream: set[str], variables: dict[str, Any] | None
) -> list[Issue]:
    issues: list[Issue] = []
    for match in EXPRESSION.finditer(text):  # one by one: a bad one does not hide the others
        try:
            ref = parse_expression(match.group(1))
        except TemplateError as exc:
            issues.append(Issue(where, str(exc)))
            continue
        name = ref.path[0]
        if ref.kind == "vars" and variables is not None and name not in variables:
            hint = _suggestion(name, variables)
            issues.append(Issue(where, f"{{{{ {ref} }}}}: unknown variable {name!r}{hint}"))
        elif ref.kind == "outputs" and name not in upstream:
            issues.append(
                Issue(
                    where,
                    f"{{{{ {ref} }}}}: task {name!r} is not upstream of this task (add it to depends_on)",
                )
            )
    return issues


def _foreach_type_issues(
    task: Mapping[str, Any], position: int, variables: dict[str, Any] | None
) -> list[Issue]:
    """``foreach: "{{ vars.x }}"`` where ``x`` is declared with a type other than list."""
    from orchestrator.package import VariableType

    foreach = task.get("foreach")
    whole = EXPRESSION.fullmatch(foreach.strip()) if isinstance(foreach, str) else None
    if whole is None or variables is None:
        return []
    try:
        ref = parse_expression(whole.group(1))
    except TemplateError:
        return []  # reported by _reference_issues
    declared = variables.get(ref.path[0]) if ref.kind == "vars" else None
    kind = declared.get("type", "str") if isinstance(declared, Mapping) else None
    known = {t.value for t in VariableType}
    if len(ref.path) != 1 or not isinstance(kind, str) or kind == "list" or kind not in known:
        return []  # not a plain variable, or its bad type is reported already
    return [
        Issue(
            f"tasks[{position}].foreach",
            f"{{{{ {ref} }}}}: variable {ref.path[0]!r} is of type {kind}, foreach needs a list",
        )
    ]
