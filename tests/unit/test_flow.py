"""Plan semantics of control flow (pure: no executor), validation of the new keys, and the hash."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.errors import Issue, PackageInvalid
from orchestrator.packages.conditions import ConditionError, evaluate
from orchestrator.packages.flow import Constraint, Decision, DependsMode, On, Outcome, decide
from orchestrator.packages.validation import load_package, parse_package
from tests.support.cli import ROOT
from workers.plan import Plan, Unit

KINDS = ["success", "failure", "completion"]


def met(on: str, outcome: Outcome) -> bool:
    """The reference: SSIS's table, written out."""
    return outcome is not Outcome.SKIPPED and (
        on == "completion" or (on == "success") == (outcome is Outcome.SUCCEEDED)
    )


@st.composite
def graphs(draw: st.DrawFn) -> tuple[dict[str, Any], set[str], int]:
    """A random package (each task depends on some earlier ones, any kind, any mode), the tasks
    that fail when they run, and after how many units an attempt is cut short."""
    count = draw(st.integers(1, 7))
    tasks = []
    for n in range(count):
        earlier = draw(st.lists(st.integers(0, n - 1), unique=True, max_size=3)) if n else []
        depends = [{"task": f"t{e}", "on": draw(st.sampled_from(KINDS))} for e in earlier]
        mode = draw(st.sampled_from(["all", "any"]))
        tasks.append({"id": f"t{n}", "shell": "true", "depends_on": depends, "depends_on_mode": mode})
    failing = draw(st.sets(st.sampled_from([t["id"] for t in tasks])))
    cut = draw(st.integers(0, count))
    return {"name": "p", "tasks": tasks}, failing, cut


def expected_outcomes(definition: dict[str, Any], failing: set[str]) -> dict[str, Outcome]:
    """Decide each task in file order (a topological order) by the table."""
    outcomes: dict[str, Outcome] = {}
    for task in definition["tasks"]:
        results = [met(d["on"], outcomes[d["task"]]) for d in task["depends_on"]]
        runs = not results or (all(results) if task["depends_on_mode"] == "all" else any(results))
        if not runs:
            outcomes[task["id"]] = Outcome.SKIPPED
        else:
            outcomes[task["id"]] = Outcome.FAILED if task["id"] in failing else Outcome.SUCCEEDED
    return outcomes


def drive(plan: Plan, failing: set[str], limit: int | None = None) -> dict[str, Outcome]:
    """Run the plan's units one at a time (every failure recorded); stop after ``limit`` units."""
    ran = 0
    while (unit := plan.take()) is not None and (limit is None or ran < limit):
        assert isinstance(unit, Unit)
        ran += 1
        plan.ended(unit)
        if unit.task.id in failing:
            plan.task_failed(unit.task.id, recorded=True)
        else:
            plan.task_finished(unit.task.id)
    return dict(plan.outcomes)


@settings(max_examples=150, deadline=None)
@given(graphs())
def test_the_plan_decides_as_the_table_and_a_resume_decides_the_same(case: Any) -> None:
    definition, failing, cut = case
    package = parse_package(definition)
    expected = expected_outcomes(definition, failing)
    assert drive(Plan(package), failing) == expected
    first = Plan(package)
    partial = drive(first, failing, limit=cut)
    resumed = Plan(package, set(partial), recorded=partial)
    assert drive(resumed, failing) == expected
    skipped = [task for task, _ in first.drain_skipped() + resumed.drain_skipped()]
    assert sorted(skipped) == sorted(t for t, o in expected.items() if o is Outcome.SKIPPED)


def test_decide_waits_only_for_what_it_needs() -> None:
    a, b = Constraint(task="a"), Constraint(task="b", on=On.FAILURE)
    assert decide([a, b], DependsMode.ALL, {"a": Outcome.FAILED}) is Decision.SKIP  # no need for b
    assert decide([a, b], DependsMode.ALL, {"a": Outcome.SUCCEEDED}) is Decision.WAIT
    assert decide([a, b], DependsMode.ANY, {"a": Outcome.SUCCEEDED}) is Decision.RUN  # no need for b
    assert decide([a, b], DependsMode.ANY, {"a": Outcome.FAILED}) is Decision.WAIT
    assert decide([], DependsMode.ANY, {}) is Decision.RUN


def test_an_unrecorded_failure_blocks_but_does_not_skip_for_good() -> None:
    package = parse_package(
        {
            "name": "p",
            "tasks": [
                {"id": "a", "shell": "true"},
                {"id": "b", "shell": "true", "depends_on": ["a"]},
                {"id": "c", "shell": "true", "depends_on": [{"task": "a", "on": "completion"}]},
            ],
        }
    )
    plan = Plan(package)
    unit = plan.take()
    assert isinstance(unit, Unit)
    plan.ended(unit)
    assert plan.fails_package(package.task("a"))
    plan.task_failed("a", recorded=False)
    assert plan.drain_skipped() == [("b", False)]
    assert [t.id for t in plan.ready] == ["c"]


# -- conditions ---------------------------------------------------------------------------------


def test_conditions_are_cel_and_must_give_a_boolean() -> None:
    assert evaluate("vars.n > 2 && outputs.a.rows == 3", {"n": 3}, {"a": {"rows": 3}})
    assert evaluate("event.task == 'load'", {}, {}, {"task": "load"})
    assert evaluate("vars.l.exists(x, x > 2)", {"l": [1, 3]}, {})
    with pytest.raises(ConditionError, match="not a boolean"):
        evaluate("vars.n + 1", {"n": 1}, {})
    with pytest.raises(ConditionError, match="failed"):
        evaluate("vars.missing", {}, {})


# -- validation -------------------------------------------------------------------------------


def issues_of(definition: dict[str, Any]) -> list[Issue]:
    with pytest.raises(PackageInvalid) as caught:
        parse_package(definition)
    return caught.value.issues


def test_every_control_flow_problem_is_reported_at_once() -> None:
    issues = issues_of(
        {
            "name": "p",
            "variables": {"rows": {"type": "int", "default": 0}},
            "tasks": [
                {"id": "a", "shell": "true"},
                {
                    "id": "b",
                    "shell": "true",
                    "depends_on": [{"task": "nope", "on": "failure"}, {"task": "a", "on": "sometimes"}],
                    "depends_on_mode": "either",
                    "when": "vars.rowz > 0 && outputs.c.n > 0",
                },
                {"id": "c", "shell": "true", "depends_on": ["a"], "when": "vars.rows >"},
            ],
            "on_error": [
                {"id": "alert", "shell": "true", "depends_on": ["a"], "when": "event.task == 'a' && x"},
                {"id": "a", "shell": "true", "foreach": [1]},
                {"id": "page", "shell": "true", "depends_on": ["later"]},
                {"id": "later", "shell": "true"},
            ],
        }
    )
    assert set(map(str, issues)) == {
        "tasks[1].depends_on[1].on: bad value 'sometimes': expected one of 'success', 'failure' or 'completion'",
        "tasks[1].depends_on_mode: bad value 'either': expected one of 'all' or 'any'",
        "tasks[1].depends_on[0]: unknown task 'nope'",
        "tasks[1].when: unknown variable 'rowz' (did you mean 'rows'?)",
        "tasks[1].when: outputs.c: task 'c' is not upstream of this task (add it to depends_on)",
        "tasks[2].when: condition does not parse at line 1, column 11: vars.rows >",
        "on_error[0].depends_on[0]: a handler cannot depend on the task 'a': it runs on an event, not in the graph",
        "on_error[0].when: unknown name 'x': a condition reads event, outputs, vars",
        "on_error[1].id: 'a' is already a task id",
        "on_error[1].foreach: an event handler runs once per event: no foreach",
        "on_error[2].depends_on[0]: unknown handler 'later': a handler depends only on a handler before it in on_error",
    }


def test_a_cycle_through_constraints_is_reported() -> None:
    issues = issues_of(
        {
            "name": "p",
            "tasks": [
                {"id": "a", "shell": "true", "depends_on": [{"task": "b", "on": "failure"}]},
                {"id": "b", "shell": "true", "depends_on": [{"task": "a", "on": "completion"}]},
            ],
        }
    )
    assert [str(i) for i in issues] == [
        "tasks[0].depends_on: dependency cycle: a -> b -> a (each depends on the next)"
    ]


def test_a_bad_depends_on_entry_is_reported_once() -> None:
    issues = issues_of({"name": "p", "tasks": [{"id": "a", "shell": "true", "depends_on": [5, "B"]}]})
    assert [str(i) for i in issues] == [
        "tasks[0].depends_on[0]: expected a mapping, got an integer 5",
        "tasks[0].depends_on[1]: bad value 'B': a task id is 1-64 characters of [a-z0-9_-]",
        "tasks[0].depends_on[1]: unknown task 'B'",
    ]


# -- the definition hash ------------------------------------------------------------------------


def test_packages_without_the_new_keys_keep_their_hash() -> None:
    """The hash the engine computed for the example: its checkpoints must still match."""
    example = load_package(ROOT / "examples" / "orders_nightly.yaml")
    assert example.definition_hash == "f201794ebfbc9624daf135e117e5a9484765bac9a6f1bf6cfbde3af822bc1730"
    data = yaml.safe_load((ROOT / "examples" / "orders_nightly.yaml").read_text())
    data["on_error"], data["tasks"][0]["depends_on_mode"], data["tasks"][0]["when"] = [], "all", None
    assert parse_package(data).definition_hash == example.definition_hash  # the defaults, written out
    data["tasks"][0]["when"] = "true"
    assert parse_package(data).definition_hash != example.definition_hash


def test_a_plain_id_and_a_success_constraint_mean_the_same() -> None:
    plain = parse_package(
        {"name": "p", "tasks": [{"id": "a", "shell": "x"}, {"id": "b", "shell": "x", "depends_on": ["a"]}]}
    )
    task = plain.task("b")
    assert task.constraints == [Constraint(task="a", on=On.SUCCESS)] and task.upstream == ["a"]


def test_the_ui_graph_draws_failure_and_completion_edges_distinctly() -> None:
    from orchestrator.ui.detail import edge_kinds
    from orchestrator.ui.graph import GraphTask, render_svg

    task = {"id": "c", "depends_on": ["a", {"task": "b", "on": "failure"}, {"task": "d", "on": "completion"}]}
    svg = str(
        render_svg(
            [
                GraphTask("a", [], "succeeded"),
                GraphTask("b", [], "failed"),
                GraphTask("d", [], "succeeded"),
                GraphTask("c", ["a", "b", "d"], "skipped", kinds=edge_kinds(task)),
            ]
        )
    )
    assert 'class="edge from-failed on-failure" data-from="b"' in svg
    assert 'class="edge from-succeeded on-completion" data-from="d"' in svg
    assert 'class="edge from-succeeded on-success" data-from="a"' in svg


def test_handler_templates_are_checked_against_every_task() -> None:
    issues = issues_of(
        {
            "name": "p",
            "tasks": [{"id": "a", "shell": "true"}],
            "on_finish": [{"id": "h", "shell": "echo {{ outputs.a.n }} {{ vars.nope }} {{ outputs.zz.k }}"}],
        }
    )
    assert [str(i) for i in issues] == [
        "on_finish[0].shell: {{ vars.nope }}: unknown variable 'nope'",
        "on_finish[0].shell: {{ outputs.zz.k }}: task 'zz' is not upstream of this task (add it to depends_on)",
    ]


def test_the_builder_writes_constraints_conditions_and_handlers() -> None:
    from orchestrator.packages import PackageBuilder

    package = (
        PackageBuilder("p")
        .shell("a", "true")
        .shell("b", "true", depends_on=[{"task": "a", "on": "failure"}], depends_on_mode="any", when="true")
        .handler("on_error", "alert", python="tests.support.tasks:handler")
        .build()
    )
    assert package.task("b").constraints == [Constraint(task="a", on=On.FAILURE)]
    assert package.task("b").depends_on_mode is DependsMode.ANY and package.task("b").when == "true"
    assert [h.id for h in package.on_error] == ["alert"]


def test_the_timeline_tells_skipped_tasks_and_handler_runs() -> None:
    from orchestrator.ui.timeline import describe

    assert describe("task_skipped", {"task": "publish"}, None).startswith("task publish skipped")
    assert describe("handler_done", {"handler": "alert", "job": "on_error:load"}, None) == (
        "handler alert done (on_error:load)"
    )
