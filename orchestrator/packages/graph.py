"""Problems of a package's task graph and templates, found on the raw mapping.

Duplicate ids, unknown dependencies, cycles and templates naming what is not
there are looked for on the mapping as given, not on the validated model, so
they are reported together with field errors (:mod:`orchestrator.packages.validation`).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from orchestrator.errors import Issue
from orchestrator.packages.flowcheck import HANDLER_SECTIONS, Ancestors, constraint_task, flow_issues
from orchestrator.packages.kinds import VariableType
from orchestrator.packages.templating import EXPRESSION, TemplateError, parse_expression


def suggestion(word: str, candidates: Iterable[object]) -> str:
    names = [c for c in candidates if isinstance(c, str)]  # YAML keys may be numbers
    close = difflib.get_close_matches(word, names, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


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
    ancestors = _Ancestry()
    issues.extend(_template_issues(tasks, graph, declared, ancestors))
    issues.extend(write_issues(tasks, graph, declared, data.get("max_concurrency"), ancestors))
    issues.extend(flow_issues(data, graph, declared, ancestors))
    for section in HANDLER_SECTIONS:
        handlers = data.get(section)
        if isinstance(handlers, list):
            issues.extend(_handler_template_issues(section, handlers, set(index), declared))
    return issues


def _handler_template_issues(
    section: str, handlers: list[Any], tasks: set[str], variables: dict[str, Any] | None
) -> list[Issue]:
    """Templates of event handlers: any task's output may be read (a handler runs after it)."""
    issues: list[Issue] = []
    for position, handler in enumerate(handlers):
        if not isinstance(handler, Mapping):
            continue
        for field in ("params", "shell"):
            for where, text in _strings(handler.get(field), f"{section}[{position}].{field}"):
                issues.extend(_reference_issues(where, text, tasks, variables))
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
        for slot, entry in enumerate(depends_on):
            dependency = constraint_task(entry)
            if dependency is None:
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
                        f"unknown task {dependency!r}" + suggestion(dependency, index),
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


class _Ancestry:
    """:func:`_ancestors` of one graph, each task's found once and only when asked for.

    A package is parsed on every first attempt of a run: a chain of n tasks would otherwise
    cost n walks of up to n tasks, for templates that most tasks do not have.
    """

    def __init__(self) -> None:
        self._found: dict[str, set[str]] = {}

    def __call__(self, graph: dict[str, list[str]], task_id: str) -> set[str]:
        found = self._found.get(task_id)
        if found is None:
            found = self._found[task_id] = _ancestors(graph, task_id)
        return found


def _template_issues(
    tasks: list[Any], graph: dict[str, list[str]], variables: dict[str, Any] | None, ancestors: Ancestors
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
        strings = [
            found
            for field in ("params", "shell", "foreach")
            for found in _strings(task.get(field), f"tasks[{position}].{field}")
        ]
        if strings:
            upstream = ancestors(graph, task_id) if isinstance(task_id, str) else set()
            for where, text in strings:
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
            hint = suggestion(name, variables)
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


def write_issues(
    tasks: list[Any],
    graph: dict[str, list[str]],
    variables: dict[str, Any] | None,
    max_concurrency: Any,
    ancestors: Ancestors,
) -> list[Issue]:
    """``writes`` naming unknown variables, or a variable two units that may run at once both write.

    Two tasks may run at once unless one depends on the other; the items of a
    foreach with ``concurrency`` above 1 may too; nothing does at ``max_concurrency: 1``.
    """
    issues: list[Issue] = []
    writers: list[tuple[int, str, set[str]]] = []
    for position, task in enumerate(tasks):
        writes = task.get("writes") if isinstance(task, Mapping) else None
        task_id = task.get("id") if isinstance(task, Mapping) else None
        if not isinstance(writes, list) or not isinstance(task_id, str):
            continue
        names = {w for w in writes if isinstance(w, str)}
        for slot, name in enumerate(writes):
            if variables is not None and isinstance(name, str) and name not in variables:
                where = f"tasks[{position}].writes[{slot}]"
                issues.append(Issue(where, f"unknown variable {name!r}" + suggestion(name, variables)))
        writers.append((position, task_id, names))
    if max_concurrency == 1:
        return issues
    for position, task_id, names in writers:
        concurrency = tasks[position].get("concurrency", 1)
        parallel_items = isinstance(concurrency, int) and concurrency > 1
        if names and tasks[position].get("foreach") is not None and parallel_items:
            issues.append(
                Issue(
                    f"tasks[{position}].writes",
                    f"the items of {task_id!r} run {concurrency} at once, so they must not write variables "
                    "(return outputs instead, or set concurrency: 1)",
                )
            )
    issues.extend(_overlapping_writes(writers, graph, ancestors))
    return issues


def _overlapping_writes(
    writers: list[tuple[int, str, set[str]]],
    graph: dict[str, list[str]],
    ancestors: Ancestors,
) -> list[Issue]:
    issues: list[Issue] = []
    for index, (position, task_id, names) in enumerate(writers):
        for _, other, other_names in writers[:index]:
            shared = sorted(names & other_names)
            related = other in ancestors(graph, task_id) or task_id in ancestors(graph, other)
            if shared and not related and task_id != other:
                issues.append(
                    Issue(
                        f"tasks[{position}].writes",
                        f"tasks {other!r} and {task_id!r} may run at the same time (neither depends on "
                        f"the other) and both write {', '.join(map(repr, shared))}: make one depend on "
                        "the other, or let one return an output instead",
                    )
                )
    return issues
