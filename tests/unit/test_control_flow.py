"""Control flow in the executor: the SSIS semantics table, skipped tasks, handled failures,
conditions and event handlers, and what a resumed run keeps of them (docs/control-flow.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from orchestrator.packages.model import Package
from orchestrator.state.states import RunState, TaskState
from tests.support import tasks as T
from tests.support.cli import wait_until
from tests.support.executor import Killed, kill_in, package, run, task
from workers.context import TaskContext


@pytest.fixture(autouse=True)
def _log(task_log: Path) -> Path:
    """Every test logs its executions and starts with no task hooks (tests/support/executor.py)."""
    return task_log


def handler(handler_id: str, **fields: Any) -> dict[str, Any]:
    return {"id": handler_id, "python": "tests.support.tasks:handler", **fields}


def crash(pkg: Package, store: Any, task_id: str) -> None:
    kill_in(task_id)
    with pytest.raises(Killed):
        run(pkg, store)
    T.HOOKS.pop(task_id)


def starts(entries: list[dict[str, Any]], task_id: str, item: Any = None) -> int:
    return T.count(entries, "start", task_id, item)


FAIL = {"fail": True}

# -- the SSIS semantics table ----------------------------------------------------------------


@pytest.mark.parametrize("upstream", ["succeeded", "failed"])
@pytest.mark.parametrize("on", ["success", "failure", "completion"])
@pytest.mark.parametrize("mode", ["all", "any"])
@pytest.mark.parametrize("condition", [True, False])
def test_ssis_semantics_table(store: Any, upstream: str, on: str, mode: str, condition: bool) -> None:
    """t depends on ``a`` (constraint ``on``, a succeeds or fails) and on ``b``'s success (b succeeds).

    AND: t runs when a's constraint is met and its condition is true; OR: b's success is
    enough, so only the condition decides. A task that does not run is skipped; one blocked
    by a failure that nothing handles is ``upstream_failed`` (a resumed run retries that
    failure). The run fails when ``a`` fails and no failure constraint handles it.
    """
    a_failed = upstream == "failed"
    pkg = package(
        task("a", params=FAIL if a_failed else {}),
        task("b"),
        task(
            "t",
            {"task": "a", "on": on},
            {"task": "b", "on": "success"},
            depends_on_mode=mode,
            when="vars.go" if condition else "!vars.go",
        ),
        variables={"go": {"type": "bool", "default": True}},
    )
    result = run(pkg, store)
    a_met = on == "completion" or (on == "failure") == a_failed
    constraints_met = a_met if mode == "all" else True
    if constraints_met and condition:
        expected = TaskState.SUCCEEDED
    elif constraints_met or not a_failed or on == "failure":
        expected = TaskState.SKIPPED  # decided by outcomes that are final
    else:
        expected = TaskState.UPSTREAM_FAILED
    assert result.tasks["t"] is expected
    run_fails = a_failed and on != "failure"
    assert result.state is (RunState.FAILED if run_fails else RunState.SUCCEEDED)


# -- skipping and handled failures -------------------------------------------------------------


def test_skipping_propagates_through_success_and_completion_constraints(store: Any, log: Any) -> None:
    pkg = package(
        task("a"),
        task("off", "a", when="false"),
        task("after", "off"),
        task("done", {"task": "off", "on": "completion"}),
        task("either", "a", "off", depends_on_mode="any"),
    )
    result = run(pkg, store)
    assert result.succeeded
    assert {t: result.tasks[t] for t in ("off", "after", "done", "either")} == {
        "off": TaskState.SKIPPED,
        "after": TaskState.SKIPPED,
        "done": TaskState.SKIPPED,  # SSIS: completion needs the task to have run
        "either": TaskState.SUCCEEDED,
    }
    assert starts(log(), "off") == starts(log(), "after") == starts(log(), "done") == 0


def test_a_handled_failure_is_recorded_and_not_rerun_on_resume(store: Any, log: Any) -> None:
    pkg = package(
        task("load", params=FAIL),
        task("cleanup", {"task": "load", "on": "failure"}),
        task("report", "load"),
        task("last", {"task": "cleanup", "on": "success"}),
    )
    crash(pkg, store, "last")
    result = run(pkg, store)
    assert result.state is RunState.SUCCEEDED and result.resumed
    assert result.tasks["load"] is TaskState.FAILED and result.tasks["report"] is TaskState.SKIPPED
    assert starts(log(), "load") == 1 and starts(log(), "cleanup") == 1 and starts(log(), "last") == 2
    assert result.skipped == ["load", "cleanup", "report"]


def test_an_unhandled_failure_blocks_its_success_branch_and_is_retried_on_resume(
    store: Any, log: Any
) -> None:
    pkg = package(task("load", fn="fail_times", params={"times": 1}), task("next", "load"))
    first = run(pkg, store)
    assert first.state is RunState.FAILED and first.tasks["next"] is TaskState.UPSTREAM_FAILED
    second = run(pkg, store)
    assert second.succeeded and second.tasks["next"] is TaskState.SUCCEEDED


def test_a_condition_that_cannot_be_evaluated_fails_its_task(store: Any) -> None:
    pkg = package(task("a"), task("b", "a", when="outputs.a.missing > 1"))
    result = run(pkg, store)
    assert result.state is RunState.FAILED and result.tasks["b"] is TaskState.FAILED
    assert "when: condition" in (result.error or "")


def test_a_condition_over_a_restored_output_decides_the_same_after_a_resume(store: Any, log: Any) -> None:
    """``a`` ran in epoch 1; ``b``'s condition reads that output after a resume in epoch 2."""
    pkg = package(
        task("a"),
        task("c", "a"),
        task("b", "a", "c", when="outputs.a.epoch == 1"),
        task("off", "a", "c", when="outputs.a.epoch != 1"),
    )
    crash(pkg, store, "c")
    result = run(pkg, store)
    assert result.succeeded and starts(log(), "a") == 1
    assert result.tasks["b"] is TaskState.SUCCEEDED and result.tasks["off"] is TaskState.SKIPPED


def test_skipped_tasks_are_not_decided_again_on_resume(store: Any, log: Any) -> None:
    pkg = package(
        task("a", fn="units", params={"units": 1}),
        task("skip_me", "a", when="vars.flag"),
        task("c", "a"),
        variables={"flag": {"type": "bool", "default": False}},
    )
    crash(pkg, store, "c")
    result = run(pkg, store, variables={"flag": True})  # the checkpoint's variables win
    assert result.succeeded and "skip_me" in result.skipped
    assert result.tasks["skip_me"] is TaskState.SKIPPED and starts(log(), "skip_me") == 0


def test_parallel_units_keep_working_with_constraints(store: Any, log: Any) -> None:
    pkg = package(
        task("a", foreach=[1, 2, 3, 4], concurrency=4, params={"fail": True}, fail_package_on_failure=False),
        task("b", {"task": "a", "on": "failure"}),
        task("c", {"task": "a", "on": "completion"}),
        task("d", "a"),
        max_concurrency=4,
    )
    result = run(pkg, store)
    assert result.succeeded
    assert [result.tasks[t] for t in "bcd"] == [TaskState.SUCCEEDED, TaskState.SUCCEEDED, TaskState.SKIPPED]


# -- event handlers -----------------------------------------------------------------------------


def test_on_error_runs_once_per_failed_task_with_the_event(store: Any, log: Any) -> None:
    pkg = package(
        task("x", params=FAIL, fail_package_on_failure=False),
        task("y", params=FAIL, fail_package_on_failure=False),
        task("z"),
        on_error=[handler("alert")],
    )
    result = run(pkg, store)
    assert result.succeeded
    starts_ = [e for e in log() if e["task"] == "alert" and e["event"] == "start"]
    assert sorted(s["handled"]["task"] for s in starts_) == ["x", "y"]
    assert (
        starts_[0]["handled"]["error"]
        == "RuntimeError: " + starts_[0]["handled"]["task"] + " failed on purpose"
    )
    assert starts_[0]["handled"]["item"] is None and starts_[0]["handled"]["attempt"] == 1
    assert result.handlers == {
        "on_error:x:alert": TaskState.SUCCEEDED,
        "on_error:y:alert": TaskState.SUCCEEDED,
    }


def test_on_error_runs_once_per_failed_item(store: Any, log: Any) -> None:
    # A failed item stops its foreach from starting more: both items start before either fails.
    def both_started(ctx: TaskContext) -> None:
        started = lambda: {e["item"] for e in log() if e["task"] == "load" and e["event"] == "start"}  # noqa: E731
        wait_until(lambda: started() == {"eu", "us"}, timeout=10, what="both items to start")

    T.HOOKS["load"] = both_started
    pkg = package(
        task("load", foreach=["eu", "us"], concurrency=2, params=FAIL, fail_package_on_failure=False),
        on_error=[handler("alert")],
    )
    result = run(pkg, store)
    assert result.succeeded
    items = sorted(e["handled"]["item"] for e in log() if e["task"] == "alert" and e["event"] == "start")
    assert items == ["eu", "us"]


def test_handlers_chain_with_constraints_and_conditions_over_the_event(store: Any, log: Any) -> None:
    pkg = package(
        task("load", params=FAIL, fail_package_on_failure=False),
        task("other", params=FAIL, fail_package_on_failure=False),
        on_error=[
            handler("truncate", when="event.task == 'load'"),
            handler("page", params=FAIL, fail_package_on_failure=False),
            handler("escalate", depends_on=[{"task": "page", "on": "failure"}]),
        ],
    )
    result = run(pkg, store)
    assert result.succeeded
    assert result.handlers["on_error:load:truncate"] is TaskState.SUCCEEDED
    assert result.handlers["on_error:other:truncate"] is TaskState.SKIPPED
    assert result.handlers["on_error:load:escalate"] is TaskState.SUCCEEDED


def test_on_success_and_on_finish(store: Any, log: Any) -> None:
    handlers = {"on_success": [handler("celebrate")], "on_finish": [handler("tidy")]}
    ok = run(package(task("a"), **handlers), store, run_id="ok")
    assert ok.succeeded and set(ok.handlers) == {"on_success:celebrate", "on_finish:tidy"}
    failed = run(package(task("a", params=FAIL), **handlers), store, run_id="bad")
    assert failed.state is RunState.FAILED and set(failed.handlers) == {"on_finish:tidy"}
    tidy = [e for e in log() if e["task"] == "tidy" and e["event"] == "start"]
    assert [t["handled"]["state"] for t in tidy] == ["succeeded", "failed"]


def test_a_failing_handler_fails_the_run(store: Any) -> None:
    result = run(package(task("a"), on_finish=[handler("h", params=FAIL)]), store)
    assert result.state is RunState.FAILED and "handler 'on_finish:h' failed" in (result.error or "")


def test_a_finished_handler_is_not_rerun_and_one_in_flight_is(store: Any, log: Any) -> None:
    pkg = package(
        task("load", params=FAIL),
        task("cleanup", {"task": "load", "on": "failure"}),
        on_error=[handler("alert"), handler("truncate")],
    )
    crash(pkg, store, "truncate")  # alert ended; truncate was in flight
    result = run(pkg, store)
    assert result.succeeded
    assert starts(log(), "load") == 1 and starts(log(), "alert") == 1 and starts(log(), "truncate") == 2
    resumed = [e for e in log() if e["task"] == "truncate" and e["event"] == "start"][-1]
    assert resumed["handled"]["task"] == "load" and resumed["handled"]["attempt"] == 1  # the recorded event


def test_packages_without_handlers_keep_their_behaviour(store: Any, log: Any) -> None:
    result = run(package(task("a"), task("b", "a")), store)
    assert result.succeeded and result.handlers == {}


def test_a_foreach_whose_items_cannot_be_listed_takes_its_failure_branch(store: Any, log: Any) -> None:
    pkg = package(
        task("a"),
        task("each", "a", foreach="{{ outputs.a.task }}"),  # a string, not a list
        task("after", "each"),
        task("rescue", {"task": "each", "on": "failure"}),
        on_error=[handler("alert")],
    )
    result = run(pkg, store)
    assert result.succeeded and result.tasks["each"] is TaskState.FAILED
    assert result.tasks["after"] is TaskState.SKIPPED and result.tasks["rescue"] is TaskState.SUCCEEDED
    assert result.handlers == {"on_error:each:alert": TaskState.SUCCEEDED}
