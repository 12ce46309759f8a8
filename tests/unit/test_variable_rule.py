"""The rule for variables written by units that may run at the same time (README, "Parallel units").

A unit sees the variables of its start plus its own writes; its writes become the
run's with its progress save or completion record; two units that may run at once
must not write the same variable (refused by validation when declared, else the
second to record it fails, naming the variable and both units).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from checkpoints import FilesystemCheckpointStore
from orchestrator.errors import PackageInvalid
from orchestrator.state.states import RunState, TaskState
from tests.support import tasks as T
from tests.unit.test_parallel import DEADLINE, Killed, package, run, task
from workers.context import TaskContext
from workers.executor import ExecutionHooks


@pytest.fixture(autouse=True)
def _log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv(T.LOG_ENV, str(tmp_path / "executions.jsonl"))
    T.HOOKS.clear()
    yield
    T.HOOKS.clear()


@pytest.fixture
def store(tmp_path: Path) -> FilesystemCheckpointStore:
    return FilesystemCheckpointStore(tmp_path / "checkpoints")


COUNTER = {"counter": {"type": "int", "default": 0}}


def test_two_tasks_that_may_run_at_once_writing_one_variable_fail_naming_both(store: Any) -> None:
    pkg = package(task("a", params={"add": 1}), task("b", params={"add": 2}), variables=COUNTER)
    result = run(pkg, store)
    assert result.state is RunState.FAILED
    error = result.error or ""
    assert "variable 'counter' is written by" in error and "'a'" in error and "'b'" in error
    assert sorted(result.tasks.values()) == sorted([TaskState.SUCCEEDED, TaskState.FAILED])
    assert store.load("pkg", "r1").variables["counter"] in (1, 2), "the loser's write was not applied"


def test_items_of_a_parallel_foreach_must_not_write_variables(store: Any) -> None:
    pkg = package(task("each", foreach=[1, 2], concurrency=2, params={"add": 1}), variables=COUNTER)
    result = run(pkg, store)
    assert result.state is RunState.FAILED
    assert "'counter'" in (result.error or "") and "each[" in (result.error or "")


def test_units_that_cannot_overlap_may_write_the_same_variable(store: Any) -> None:
    pkg = package(
        task("a", params={"add": 1}),
        task("each", "a", foreach=[1, 2, 3], params={"add": 10}),
        task("c", "each", params={"add": 100}),
        variables=COUNTER,
    )
    result = run(pkg, store)
    assert result.succeeded and result.variables["counter"] == 131


def test_at_max_concurrency_one_any_unit_may_write_any_variable(store: Any) -> None:
    pkg = package(
        task("a", params={"add": 1}), task("b", params={"add": 2}), variables=COUNTER, max_concurrency=1
    )
    assert run(pkg, store).variables["counter"] == 3


def test_a_unit_sees_the_variables_of_its_start_and_its_own_writes(store: Any) -> None:
    seen: dict[str, Any] = {}
    a_done, b_started = threading.Event(), threading.Event()

    class Watch(ExecutionHooks):
        def task_finished(
            self, task_id: str, item: Any, state: TaskState, seconds: float, error: Any
        ) -> None:
            if task_id == "a":
                a_done.set()

    def a(ctx: TaskContext) -> None:
        if not b_started.wait(DEADLINE):
            raise RuntimeError("b never started")
        ctx.vars["x"] = 1

    def b(ctx: TaskContext) -> None:
        b_started.set()
        if not a_done.wait(DEADLINE):
            raise RuntimeError("a never finished")
        seen["b"] = ctx.vars["x"]  # a's write is the run's now, but b started before it
        ctx.vars["y"] = 2
        seen["b own"] = ctx.vars["y"]

    T.HOOKS.update(a=a, b=b, c=lambda ctx: seen.update(c=(ctx.vars["x"], ctx.vars["y"])))
    variables = {"x": {"type": "int", "default": 0}, "y": {"type": "int", "default": 0}}
    pkg = package(task("a"), task("b"), task("c", "a", "b"), variables=variables)
    assert run(pkg, store, hooks=Watch()).succeeded
    assert seen == {"b": 0, "b own": 2, "c": (1, 2)}


def test_declared_writes_limit_what_a_task_may_assign(store: Any) -> None:
    def assign(ctx: TaskContext) -> None:
        ctx.vars["other"] = 5

    T.HOOKS["a"] = assign
    variables = {"counter": {"type": "int", "default": 0}, "other": {"type": "int", "default": 0}}
    result = run(package(task("a", writes=["counter"]), variables=variables), store)
    assert result.state is RunState.FAILED
    assert "assigned variable 'other', which its task does not list in 'writes' (counter)" in (
        result.error or ""
    )


def test_changing_a_list_variable_in_place_counts_as_a_write(store: Any) -> None:
    T.HOOKS["a"] = lambda ctx: ctx.vars["files"].append("a.csv")
    T.HOOKS["b"] = lambda ctx: ctx.vars["files"].append("b.csv")
    variables = {"files": {"type": "list", "default": []}}
    result = run(package(task("a"), task("b"), variables=variables), store)
    assert result.state is RunState.FAILED and "variable 'files'" in (result.error or "")
    result = run(package(task("a"), task("b", "a"), variables=variables), store, run_id="r2")
    assert result.succeeded and result.variables["files"] == ["a.csv", "b.csv"]


def test_validation_refuses_two_concurrent_tasks_declaring_one_variable() -> None:
    with pytest.raises(PackageInvalid) as caught:
        package(task("a", writes=["counter"]), task("b", writes=["counter"]), variables=COUNTER)
    assert "tasks 'a' and 'b' may run at the same time" in str(caught.value)
    assert "tasks[1].writes" in str(caught.value)
    package(task("a", writes=["counter"]), task("b", "a", writes=["counter"]), variables=COUNTER)
    package(
        task("a", writes=["counter"]), task("b", writes=["counter"]), variables=COUNTER, max_concurrency=1
    )


def test_validation_refuses_writes_in_a_parallel_foreach_and_unknown_names() -> None:
    with pytest.raises(PackageInvalid) as caught:
        package(
            task("each", foreach=[1, 2], concurrency=2, writes=["counter"]),
            task("b", writes=["countr"]),
            variables=COUNTER,
        )
    message = str(caught.value)
    assert "the items of 'each' run 2 at once, so they must not write variables" in message
    assert "tasks[1].writes[0]: unknown variable 'countr' (did you mean 'counter'?)" in message
    with pytest.raises(PackageInvalid, match="'concurrency' is how many foreach items run at once"):
        package(task("a", concurrency=2))


def test_a_conflict_with_a_unit_of_an_earlier_attempt_is_found_too(store: Any) -> None:
    b_may_return = threading.Event()

    def b(ctx: TaskContext) -> None:
        if not b_may_return.wait(DEADLINE):
            raise RuntimeError("a never finished")
        raise Killed  # the process dies before b records anything

    class Watch(ExecutionHooks):
        def task_finished(
            self, task_id: str, item: Any, state: TaskState, seconds: float, error: Any
        ) -> None:
            if task_id == "a":
                b_may_return.set()

    T.HOOKS["b"] = b
    pkg = package(task("a", params={"add": 1}), task("b", params={"add": 2}), variables=COUNTER)
    with pytest.raises(Killed):
        run(pkg, store, hooks=Watch())
    assert store.load("pkg", "r1").writers == {"counter": "a"}
    del T.HOOKS["b"]
    result = run(pkg, store)
    assert result.state is RunState.FAILED and "'counter' is written by 'b' and by 'a'" in (
        result.error or ""
    )
