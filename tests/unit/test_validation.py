"""All-at-once package validation: every error kind, its field path, cycles, fuzzed input."""

from __future__ import annotations

import copy
import itertools
import re
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.errors import Issue, PackageInvalid
from orchestrator.packages.validation import parse_package


def example() -> dict[str, Any]:
    """The design's example package, valid."""
    return {
        "name": "orders_nightly",
        "description": "Nightly orders load",
        "checkpoint": {"usage": "if_exists", "save": True},
        "max_restarts": 5,
        "variables": {
            "batch_date": {"type": "str", "default": "2026-11-24"},
            "rows_loaded": {"type": "int", "default": 0},
            "source_password": {"type": "str", "sensitive": True},
        },
        "tasks": [
            {
                "id": "extract",
                "python": "examples.orders:extract",
                "params": {"path": "data/orders.csv"},
                "retries": 2,
                "retry_delay": 1.0,
                "timeout": 600,
            },
            {
                "id": "load_region",
                "python": "examples.orders:load_region",
                "foreach": ["eu", "us", "apac"],
                "depends_on": ["extract"],
            },
            {
                "id": "report",
                "shell": "echo loaded {{ vars.rows_loaded }}",
                "depends_on": ["load_region"],
                "fail_package_on_failure": False,
                "always_rerun": False,
            },
        ],
    }


def issues_of(data: Any) -> list[Issue]:
    with pytest.raises(PackageInvalid) as caught:
        parse_package(data)
    return caught.value.issues


def mutated(change: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
    data = example()
    change(data)
    return data


def graph_package(edges: dict[str, list[str]]) -> dict[str, Any]:
    """A package whose tasks (in the given order) depend on each other as ``edges`` says."""
    tasks = [{"id": task, "shell": "true", "depends_on": deps} for task, deps in edges.items()]
    return {"name": "graph", "tasks": tasks}


def test_the_example_is_valid() -> None:
    assert parse_package(example()).name == "orders_nightly"


# --- one error kind at a time: exactly this issue, with its path -------------------------

SINGLE_ERRORS: list[tuple[str, Callable[[dict[str, Any]], object], Issue]] = [
    (
        "unknown top-level key",
        lambda d: d.update(nmae="x"),
        Issue("nmae", "unknown key 'nmae' (did you mean 'name'?)"),
    ),
    (
        "unknown task key",
        lambda d: d["tasks"][0].update(retires=3),
        Issue("tasks[0].retires", "unknown key 'retires' (did you mean 'retries'?)"),
    ),
    (
        "unknown variable key",
        lambda d: d["variables"]["batch_date"].update(tpye="str"),
        Issue("variables.batch_date.tpye", "unknown key 'tpye' (did you mean 'type'?)"),
    ),
    (
        "unknown checkpoint key",
        lambda d: d["checkpoint"].update(sav=True),
        Issue("checkpoint.sav", "unknown key 'sav' (did you mean 'save'?)"),
    ),
    (
        "unknown key without a close match",
        lambda d: d["tasks"][1].update(zzzzzz=1),
        Issue("tasks[1].zzzzzz", "unknown key 'zzzzzz'"),
    ),
    (
        "duplicate task id",
        lambda d: d["tasks"].append({"id": "extract", "shell": "true"}),
        Issue("tasks[3].id", "duplicate task id 'extract' (first at tasks[0])"),
    ),
    (
        "unknown dependency",
        lambda d: d["tasks"][2].update(depends_on=["load_region", "reprot"]),
        Issue("tasks[2].depends_on[1]", "unknown task 'reprot' (did you mean 'report'?)"),
    ),
    (
        "self-dependency",
        lambda d: d["tasks"][1].update(depends_on=["extract", "load_region"]),
        Issue("tasks[1].depends_on[1]", "task 'load_region' depends on itself"),
    ),
    (
        "dependency cycle",
        lambda d: d["tasks"][0].update(depends_on=["report"]),
        Issue(
            "tasks[0].depends_on",
            "dependency cycle: extract -> report -> load_region -> extract (each depends on the next)",
        ),
    ),
    (
        "bad variable type",
        lambda d: d["variables"]["rows_loaded"].update(type="integer"),
        Issue(
            "variables.rows_loaded.type",
            "bad value 'integer': expected one of 'str', 'int', 'float', 'bool', 'list' or 'dict'",
        ),
    ),
    (
        "default of the wrong type",
        lambda d: d["variables"]["rows_loaded"].update(default="many"),
        Issue("variables.rows_loaded", "default 'many' is not of type int"),
    ),
    (
        "a bool default is not an int",
        lambda d: d["variables"]["rows_loaded"].update(default=True),
        Issue("variables.rows_loaded", "default True is not of type int"),
    ),
    (
        "bad package name",
        lambda d: d.update(name="Orders Nightly"),
        Issue("name", "bad value 'Orders Nightly': a package name is [a-z0-9][a-z0-9_-]{0,63}"),
    ),
    (
        "package name too long",
        lambda d: d.update(name="a" * 65),
        Issue("name", f"bad value '{'a' * 56}...: a package name is [a-z0-9][a-z0-9_-]{{0,63}}"),
    ),
    (
        "bad task id",
        lambda d: d["tasks"][2].update(id="Report!"),
        Issue("tasks[2].id", "bad value 'Report!': a task id is 1-64 characters of [a-z0-9_-]"),
    ),
    (
        "bad variable name",
        lambda d: d["variables"].update({"1st": {"type": "int", "default": 1}}),
        Issue("variables.1st", "bad variable name '1st': expected [A-Za-z_][A-Za-z0-9_]{0,63}"),
    ),
    (
        "task with both python and shell",
        lambda d: d["tasks"][0].update(shell="echo"),
        Issue("tasks[0]", "a task has both 'python' and 'shell'; give exactly one"),
    ),
    (
        "task with neither python nor shell",
        lambda d: d["tasks"][0].pop("python"),
        Issue("tasks[0]", "a task needs 'python' (module:function), 'shell' (a command), 'sql' or 'copy'"),
    ),
    (
        "bad python target",
        lambda d: d["tasks"][0].update(python="examples/orders.py"),
        Issue(
            "tasks[0].python",
            "bad value 'examples/orders.py': a python task is 'package.module:function'",
        ),
    ),
    (
        "non-unique foreach items",
        lambda d: d["tasks"][1].update(foreach=["eu", "us", "eu", 1, "1"]),
        Issue("tasks[1].foreach", "foreach items must be unique; repeated: 1, eu"),
    ),
    (
        "foreach of something else than a list",
        lambda d: d["tasks"][1].update(foreach={"eu": 1}),
        Issue("tasks[1].foreach", "foreach is a list of strings, numbers or booleans"),
    ),
    (
        "foreach expression naming a variable that is not a list",
        lambda d: d["tasks"][1].update(foreach="{{ vars.batch_date }}"),
        Issue(
            "tasks[1].foreach",
            "{{ vars.batch_date }}: variable 'batch_date' is of type str, foreach needs a list",
        ),
    ),
    (
        "unknown variable in a template",
        lambda d: d["tasks"][2].update(shell="echo {{ vars.rows_loded }}"),
        Issue(
            "tasks[2].shell",
            "{{ vars.rows_loded }}: unknown variable 'rows_loded' (did you mean 'rows_loaded'?)",
        ),
    ),
    (
        "outputs of a task that is not upstream",
        lambda d: d["tasks"][1].update(params={"n": "{{ outputs.report.rows }}"}),
        Issue(
            "tasks[1].params.n",
            "{{ outputs.report.rows }}: task 'report' is not upstream of this task (add it to depends_on)",
        ),
    ),
    (
        "outputs of an indirect upstream task are fine, of itself not",
        lambda d: d["tasks"][2].update(shell="echo {{ outputs.extract.rows }} {{ outputs.report.rows }}"),
        Issue(
            "tasks[2].shell",
            "{{ outputs.report.rows }}: task 'report' is not upstream of this task (add it to depends_on)",
        ),
    ),
    (
        "unsupported template expression",
        lambda d: d["tasks"][0].update(params={"files": ["a", "{{ vars.batch_date | upper }}"]}),
        Issue(
            "tasks[0].params.files[1]",
            "unsupported template expression {{ vars.batch_date | upper }}: "
            "only {{ vars.NAME }} and {{ outputs.TASK[.KEY...] }} are allowed",
        ),
    ),
    (
        "required key missing",
        lambda d: d["tasks"][2].pop("id"),
        Issue("tasks[2].id", "required key 'id' is missing"),
    ),
    (
        "no tasks",
        lambda d: d.update(tasks=[]),
        Issue("tasks", "a package needs at least one task"),
    ),
    (
        "a bool is not a count",
        lambda d: d.update(max_restarts=True),
        Issue("max_restarts", "expected an integer, got a boolean True"),
    ),
    (
        "a numeric string is not a count",
        lambda d: d["tasks"][0].update(retries="2"),
        Issue("tasks[0].retries", "expected an integer, got a string '2'"),
    ),
    (
        "a string is not a boolean",
        lambda d: d["checkpoint"].update(save="no"),
        Issue("checkpoint.save", "expected true or false, got a string 'no'"),
    ),
    (
        "a bool is not a duration",
        lambda d: d["tasks"][0].update(timeout=True),
        Issue("tasks[0].timeout", "expected a number, got a boolean True"),
    ),
    (
        "out of range",
        lambda d: d["tasks"][0].update(retries=-1),
        Issue("tasks[0].retries", "-1 should be greater than or equal to 0"),
    ),
    (
        "a task that is not a mapping",
        lambda d: d["tasks"].append("report2"),
        Issue("tasks[3]", "expected a mapping, got a string 'report2'"),
    ),
    (
        "a key that is not a string",
        lambda d: d["tasks"][0]["params"].update({5: "x"}),
        Issue("tasks[0].params", "key 5 is not a string"),
    ),
]


@pytest.mark.parametrize(
    ("change", "expected"),
    [pytest.param(change, issue, id=label) for label, change, issue in SINGLE_ERRORS],
)
def test_each_error_kind_alone(change: Callable[[dict[str, Any]], object], expected: Issue) -> None:
    assert issues_of(mutated(change)) == [expected]


@pytest.mark.parametrize(
    ("command", "quotes"),
    [
        ("echo '{{ vars.batch_date }}'", "single"),
        ('echo "loaded {{ vars.rows_loaded }} rows"', "double"),
        ("echo \"it's\" '--{{ vars.batch_date }}'", "single"),
    ],
)
def test_a_template_inside_shell_quotes_is_refused(command: str, quotes: str) -> None:
    # shlex.quote's quoting is undone inside the author's quotes: "$(...)" in a value would run.
    [issue] = issues_of(mutated(lambda d: d["tasks"][2].update(shell=command)))
    assert issue.path == "tasks[2].shell"
    assert f"is inside {quotes} quotes" in issue.message and "remove the quotes" in issue.message


@pytest.mark.parametrize(
    "command",
    [
        "echo {{ vars.batch_date }}",
        "echo 'a' {{ vars.batch_date }} \"b\"",
        'echo "it\'s" --date={{ vars.batch_date }}',
        'echo \\"{{ vars.batch_date }}',
        "echo '{ not a template }' {{ vars.batch_date }}",
    ],
)
def test_a_template_outside_shell_quotes_is_fine(command: str) -> None:
    parse_package(mutated(lambda d: d["tasks"][2].update(shell=command)))


def test_variables_that_are_not_a_mapping_give_one_issue_not_a_cascade() -> None:
    # The templates use vars.rows_loaded: no "unknown variable" noise on top.
    assert issues_of(mutated(lambda d: d.update(variables=["rows_loaded"]))) == [
        Issue("variables", "expected a mapping, got a list ['rows_loaded']")
    ]


def test_no_variables_at_all_makes_every_reference_unknown() -> None:
    issues = issues_of(mutated(lambda d: d.pop("variables")))
    assert issues == [Issue("tasks[2].shell", "{{ vars.rows_loaded }}: unknown variable 'rows_loaded'")]


def test_foreach_over_a_variable_with_a_bad_type_is_an_issue_not_a_crash() -> None:
    def change(d: dict[str, Any]) -> None:
        d["variables"]["rows_loaded"]["type"] = ["list"]
        d["tasks"][1]["foreach"] = "{{ vars.rows_loaded }}"

    assert issues_of(mutated(change)) == [
        Issue(
            "variables.rows_loaded.type",
            "bad value ['list']: expected one of 'str', 'int', 'float', 'bool', 'list' or 'dict'",
        )
    ]


def test_foreach_over_a_list_variable_or_an_output_is_fine() -> None:
    def change(d: dict[str, Any]) -> None:
        d["variables"]["regions"] = {"type": "list", "default": ["eu"]}
        d["tasks"][1]["foreach"] = "{{ vars.regions }}"
        d["tasks"][2]["foreach"] = "{{ outputs.extract.regions }}"

    parse_package(mutated(change))


def test_unhashable_task_id_is_an_issue_not_a_crash() -> None:
    issues = issues_of(mutated(lambda d: d["tasks"][0].update(id=["extract"])))
    assert Issue("tasks[0].id", "expected a string, got a list ['extract']") in issues


# --- many at once --------------------------------------------------------------------------


def test_every_problem_is_reported_at_once_with_its_path() -> None:
    data = {
        "name": "Bad Name",
        "descripton": "typo",
        "checkpoint": {"usage": "sometimes"},
        "variables": {
            "count": {"type": "integer"},
            "limit": {"type": "int", "default": "ten"},
            "9lives": {"type": "str"},
        },
        "tasks": [
            {"id": "a", "python": "m:a", "depends_on": ["c"]},
            {"id": "b", "python": "m:b", "depends_on": ["a"]},
            {"id": "c", "python": "m:c", "depends_on": ["b", "ghost"], "retires": 1},
            {"id": "a", "shell": "echo dup"},
            {"id": "selfish", "shell": "true", "depends_on": ["selfish"]},
            {"id": "Bad!", "shell": "true"},
            {"id": "both", "python": "m:f", "shell": "true"},
            {"id": "neither"},
            {"id": "loop", "python": "m:f", "foreach": ["x", "y", "x"]},
            {
                "id": "tmpl",
                "shell": "echo {{ vars.cuont }} {{ outputs.b.rows }} {{ vars.limit + 1 }}",
            },
        ],
    }
    with pytest.raises(PackageInvalid) as caught:
        parse_package(data)
    issues = caught.value.issues
    expected = [
        ("name", "bad value 'Bad Name'"),
        ("descripton", "unknown key 'descripton' (did you mean 'description'?)"),
        ("checkpoint.usage", "bad value 'sometimes': expected one of"),
        ("variables.count.type", "bad value 'integer'"),
        ("variables.limit", "default 'ten' is not of type int"),
        ("variables.9lives", "bad variable name '9lives'"),
        ("tasks[2].retires", "unknown key 'retires' (did you mean 'retries'?)"),
        ("tasks[2].depends_on[1]", "unknown task 'ghost'"),
        ("tasks[3].id", "duplicate task id 'a' (first at tasks[0])"),
        ("tasks[0].depends_on", "dependency cycle: a -> c -> b -> a"),
        ("tasks[4].depends_on[0]", "task 'selfish' depends on itself"),
        ("tasks[5].id", "bad value 'Bad!'"),
        ("tasks[6]", "a task has both 'python' and 'shell'"),
        ("tasks[7]", "a task needs 'python'"),
        ("tasks[8].foreach", "foreach items must be unique; repeated: x"),
        ("tasks[9].shell", "{{ vars.cuont }}: unknown variable 'cuont' (did you mean 'count'?)"),
        ("tasks[9].shell", "{{ outputs.b.rows }}: task 'b' is not upstream of this task"),
        ("tasks[9].shell", "unsupported template expression {{ vars.limit + 1 }}"),
    ]
    for path, fragment in expected:
        assert any(i.path == path and fragment in i.message for i in issues), (path, fragment)
    text = str(caught.value)
    assert text.startswith(f"package: {len(issues)} errors\n")
    assert all(f"  - {issue}" in text for issue in issues)


def test_template_problems_in_one_string_are_all_reported() -> None:
    text = "{{ vars.cuont }}-{{ vars.x | y }}-{{ outputs.report.rows }}-{{ vars.batch_date }}"
    issues = issues_of(mutated(lambda d: d["tasks"][0].update(params={"a": text})))
    assert [i.path for i in issues] == ["tasks[0].params.a"] * 3
    assert [i.message.split(":")[0] for i in issues] == [
        "{{ vars.cuont }}",
        "unsupported template expression {{ vars.x | y }}",
        "{{ outputs.report.rows }}",
    ]


# --- cycles ------------------------------------------------------------------------------

CYCLE = re.compile(r"dependency cycle: (.+) \(each depends on the next\)")


def named_cycles(issues: list[Issue]) -> list[list[str]]:
    cycles = []
    for issue in issues:
        match = CYCLE.fullmatch(issue.message)
        if match is not None:
            cycles.append(match.group(1).split(" -> "))
    return cycles


def test_cycle_is_named_in_order() -> None:
    edges = {"a": ["c"], "b": ["a"], "c": ["b"]}
    assert issues_of(graph_package(edges)) == [
        Issue("tasks[0].depends_on", "dependency cycle: a -> c -> b -> a (each depends on the next)")
    ]


def test_two_separate_cycles_are_both_reported() -> None:
    edges = {
        "a": ["b"],
        "b": ["a"],
        "free": [],
        "c": ["free", "d"],
        "d": ["e"],
        "e": ["c"],
        "after": ["a", "e"],
    }
    issues = issues_of(graph_package(edges))
    assert sorted(named_cycles(issues)) == [["a", "b", "a"], ["c", "d", "e", "c"]]
    assert [i.path for i in issues] == ["tasks[0].depends_on", "tasks[3].depends_on"]


def test_long_cycle_is_named_whole() -> None:
    names = [f"t{i:03}" for i in range(300)]
    edges = {name: [names[(i + 1) % len(names)]] for i, name in enumerate(names)}
    [cycle] = named_cycles(issues_of(graph_package(edges)))
    assert cycle == [*names, names[0]]


def test_deep_chain_is_not_a_cycle() -> None:
    # Deep enough to break a recursive depth-first search.
    names = [f"t{i}" for i in range(3000)]
    edges = {name: [names[i - 1]] if i else [] for i, name in enumerate(names)}
    assert len(parse_package(graph_package(edges)).tasks) == 3000


def test_cycle_reported_is_a_shortest_one_in_its_component() -> None:
    # a -> b -> c -> d -> a and the shortcut b -> a: one component, named by the short loop.
    edges = {"a": ["b"], "b": ["c", "a"], "c": ["d"], "d": ["a"]}
    assert named_cycles(issues_of(graph_package(edges))) == [["a", "b", "a"]]


def reach(edges: dict[str, list[str]], start: str) -> set[str]:
    seen: set[str] = set()
    pending = list(edges[start])
    while pending:
        node = pending.pop()
        if node not in seen:
            seen.add(node)
            pending.extend(edges[node])
    return seen


def cyclic_components(edges: dict[str, list[str]]) -> list[set[str]]:
    """Oracle: groups of tasks that reach each other (each group holds a cycle)."""
    reachable = {node: reach(edges, node) for node in edges}
    groups: list[set[str]] = []
    for node in edges:
        group = {other for other in reachable[node] if node in reachable[other]}
        if group and group not in groups:
            groups.append(group)
    return groups


@st.composite
def dags(draw: st.DrawFn, min_tasks: int = 1, max_tasks: int = 40) -> dict[str, list[str]]:
    """A random DAG: task k depends only on tasks before it; listed in random order."""
    count = draw(st.integers(min_tasks, max_tasks))
    names = [f"t{i}" for i in range(count)]
    edges = {
        name: draw(st.lists(st.sampled_from(names[:i]), unique=True, max_size=4)) if i else []
        for i, name in enumerate(names)
    }
    order = draw(st.permutations(names))
    return {name: edges[name] for name in order}


@settings(max_examples=60, deadline=None)
@given(dags())
def test_random_dags_have_no_cycle(edges: dict[str, list[str]]) -> None:
    package = parse_package(graph_package(edges))
    assert {t.id: t.depends_on for t in package.tasks} == edges


@settings(max_examples=60, deadline=None)
@given(dags(min_tasks=2), st.data())
def test_a_back_edge_in_a_dag_is_reported_as_a_real_cycle(
    edges: dict[str, list[str]], data: st.DataObject
) -> None:
    if not any(edges.values()):
        edges["t1"] = ["t0"]  # at least one dependency to turn around
    with_ancestors = [node for node in edges if reach(edges, node)]
    late = data.draw(st.sampled_from(sorted(with_ancestors)))
    early = data.draw(st.sampled_from(sorted(reach(edges, late))))
    edges[early] = [*edges[early], late]  # early now depends on something depending on it

    issues = issues_of(graph_package(edges))
    cycles = named_cycles(issues)
    assert cycles and all(cycle_is_real(edges, cycle) for cycle in cycles)
    assert any(early in cycle and late in cycle for cycle in cycles)


def cycle_is_real(edges: dict[str, list[str]], cycle: list[str]) -> bool:
    closed = cycle[0] == cycle[-1] and len(set(cycle[:-1])) == len(cycle) - 1
    return closed and all(nxt in edges[node] for node, nxt in itertools.pairwise(cycle))


@st.composite
def digraphs(draw: st.DrawFn) -> dict[str, list[str]]:
    """Any directed graph without self-loops (those are reported apart), cycles likely."""
    count = draw(st.integers(2, 12))
    names = [f"n{i}" for i in range(count)]
    return {
        name: draw(st.lists(st.sampled_from([n for n in names if n != name]), unique=True, max_size=3))
        for name in names
    }


@settings(max_examples=80, deadline=None)
@given(digraphs())
def test_one_real_cycle_per_cyclic_component(edges: dict[str, list[str]]) -> None:
    components = cyclic_components(edges)
    try:
        parse_package(graph_package(edges))
    except PackageInvalid as exc:
        cycles = named_cycles(exc.issues)
        assert len(exc.issues) == len(cycles), "only cycle issues expected"
    else:
        cycles = []
    assert len(cycles) == len(components)
    for cycle in cycles:
        assert cycle_is_real(edges, cycle)
        assert sum(set(cycle) <= component for component in components) == 1


# --- fuzzed invalid packages -----------------------------------------------------------------

KNOWN_KEYS = {
    "name", "description", "checkpoint", "max_restarts", "variables", "tasks", "id", "python",
    "shell", "params", "retries", "retry_delay", "timeout", "foreach", "depends_on",
    "fail_package_on_failure", "always_rerun", "type", "default", "sensitive", "usage", "save",
}  # fmt: skip

templates = st.sampled_from(
    [
        "{{ vars.rows_loaded }}",
        "{{ vars.x }}",
        "{{ outputs.extract.n }}",
        "a {{ b }}",
        "{{ vars.batch_date }}",
    ]
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8) | templates,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6) | st.integers(), inner, max_size=3)
    ),
    max_leaves=8,
)
not_a_string = st.none() | st.booleans() | st.integers() | st.floats() | st.lists(st.none())
not_an_int = st.none() | st.booleans() | st.text(max_size=3) | st.floats(0.5, 9.5) | st.lists(st.none())
not_a_bool = st.none() | st.integers() | st.text(max_size=3) | st.lists(st.none())
not_a_mapping = not_a_string.filter(lambda v: v is not None) | st.text(max_size=3)
bad_names = st.text(max_size=70).filter(lambda s: re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,63}", s) is None)
bad_ids = st.text(max_size=70).filter(lambda s: re.fullmatch(r"[a-z0-9_-]{1,64}", s) is None)
bad_var_names = st.text(max_size=8).filter(lambda s: re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", s) is None)

# Paths in the example and values that are certainly wrong there.
WRONG_VALUES: list[tuple[tuple[str | int, ...], st.SearchStrategy[Any]]] = [
    (("name",), not_a_string | bad_names),
    (("description",), not_a_string),
    (("max_restarts",), not_an_int.filter(lambda v: v is not None) | st.integers(max_value=-1)),
    (("checkpoint",), not_a_mapping),
    (("checkpoint", "usage"), not_a_string | st.sampled_from(["", "sometimes", "NEVER"])),
    (("checkpoint", "save"), not_a_bool),
    (("variables",), not_a_mapping),
    (("variables", "rows_loaded"), not_a_mapping | st.none()),
    (("variables", "rows_loaded", "type"), not_a_string | st.sampled_from(["integer", "", "any"])),
    # null is no default (a required variable): valid, so not among the wrong values.
    (("variables", "rows_loaded", "default"), st.text(max_size=3) | st.booleans()),
    (("variables", "source_password", "sensitive"), not_a_bool),
    (("tasks",), not_a_mapping | st.just([])),
    (("tasks", 0), not_a_mapping | st.none()),
    (("tasks", 0, "id"), not_a_string | bad_ids),
    (("tasks", 0, "python"), not_a_string.filter(lambda v: v is not None) | st.just("nocolon")),
    (("tasks", 0, "params"), not_a_mapping),
    (("tasks", 0, "retries"), not_an_int | st.integers(max_value=-1)),
    (("tasks", 0, "retry_delay"), not_an_int.filter(lambda v: not isinstance(v, float))),
    (("tasks", 0, "timeout"), st.booleans() | st.text(max_size=3) | st.integers(max_value=0)),
    (("tasks", 1, "foreach"), st.integers() | st.lists(st.lists(st.none()), min_size=1)),
    (("tasks", 1, "depends_on"), st.text(max_size=3) | st.lists(not_a_string, min_size=1)),
    (("tasks", 2, "shell"), not_a_string.filter(lambda v: v is not None)),
    (("tasks", 2, "fail_package_on_failure"), not_a_bool),
    (("tasks", 2, "always_rerun"), not_a_bool),
]
REQUIRED: list[tuple[str | int, ...]] = [
    ("name",), ("tasks",), ("tasks", 0, "id"), ("tasks", 1, "python"), ("tasks", 2, "shell"),
]  # fmt: skip
MAPPINGS: list[tuple[str | int, ...]] = [
    (), ("checkpoint",), ("variables", "batch_date"), ("tasks", 0), ("tasks", 2),
]  # fmt: skip


def walk(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path inside ``value`` (mappings and lists), the root excluded."""
    items: list[tuple[Any, Any]] = []
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, list):
        items = list(enumerate(value))
    paths = []
    for key, item in items:
        paths.append((*path, key))
        paths.extend(walk(item, (*path, key)))
    return paths


def at(data: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        data = data[part]
    return data


def mutate_freely(data: dict[str, Any], draw: st.DataObject) -> None:
    """Replace any part with any JSON-like value: may or may not stay valid."""
    path = draw.draw(st.sampled_from(walk(data)))
    at(data, path[:-1])[path[-1]] = draw.draw(json_values)


def mutate_surely(data: dict[str, Any], draw: st.DataObject) -> None:
    """A change that makes the package invalid whatever else is wrong with it.

    After earlier changes the part to change may be gone: then nothing is done
    (the earlier change already made the package invalid).
    """
    try:
        _mutate_surely(data, draw)
    except (KeyError, IndexError, TypeError):
        pass


def _mutate_surely(data: dict[str, Any], draw: st.DataObject) -> None:
    kind = draw.draw(st.sampled_from(["drop", "extra", "wrong", "var_name", "dependency"]))
    if kind == "drop":
        path = draw.draw(st.sampled_from(REQUIRED))
        del at(data, path[:-1])[path[-1]]
    elif kind == "extra":
        key = draw.draw(st.text(min_size=1, max_size=10).filter(lambda k: k not in KNOWN_KEYS))
        at(data, draw.draw(st.sampled_from(MAPPINGS)))[key] = draw.draw(json_values)
    elif kind == "wrong":
        path, values = draw.draw(st.sampled_from(WRONG_VALUES))
        at(data, path[:-1])[path[-1]] = draw.draw(values)
    elif kind == "var_name":
        data["variables"][draw.draw(bad_var_names)] = {"type": "str"}
    else:
        task = draw.draw(st.sampled_from(data["tasks"]))
        others = [t["id"] for t in data["tasks"] if isinstance(t["id"], str)]
        task["depends_on"] = draw.draw(
            st.lists(st.sampled_from(others) | st.text(max_size=5), min_size=1, max_size=4).filter(
                lambda deps: task["id"] in deps or not set(deps) <= set(others)
            )
        )


def assert_well_formed(exc: PackageInvalid) -> None:
    assert exc.issues
    for issue in exc.issues:
        assert isinstance(issue.path, str) and issue.message.strip()


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_invalid_packages_raise_package_invalid_only(draw: st.DataObject) -> None:
    data = example()
    mutate_surely(data, draw)
    for _ in range(draw.draw(st.integers(0, 2))):
        mutate_surely(data, draw)
    with pytest.raises(PackageInvalid) as caught:
        parse_package(data)
    assert_well_formed(caught.value)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_arbitrary_edits_never_raise_anything_else(draw: st.DataObject) -> None:
    data = example()
    for _ in range(draw.draw(st.integers(1, 3))):
        mutate_freely(data, draw)
    before = copy.deepcopy(data)
    try:
        parse_package(data)
    except PackageInvalid as exc:
        assert_well_formed(exc)
    assert data == before  # parsing never edits its input


@settings(max_examples=60, deadline=None)
@given(json_values.filter(lambda v: not isinstance(v, dict)))
def test_any_non_mapping_is_refused(value: Any) -> None:
    [issue] = issues_of(value)
    assert issue.path == "" and issue.message.startswith("a package is a mapping, not ")


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.text(max_size=8) | st.integers(), json_values, max_size=5))
def test_any_mapping_is_handled_cleanly(value: dict[Any, Any]) -> None:
    try:
        parse_package(value)
    except PackageInvalid as exc:
        assert_well_formed(exc)
