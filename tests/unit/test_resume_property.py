"""Property: for random DAGs and a random kill point, a resume finishes every task exactly once."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from checkpoints import InMemoryCheckpointStore
from orchestrator.packages.validation import parse_package
from workers.context import TaskContext
from workers.executor import ExecutionOptions, RunRequest, execute


class Killed(BaseException):
    """The process dies: nothing in the executor may catch this."""


@st.composite
def dags(draw: st.DrawFn) -> dict[str, Any]:
    """A random DAG: task i may depend on any subset of tasks before it; some are foreach or
    progress-saving tasks."""
    count = draw(st.integers(min_value=1, max_value=8))
    tasks = []
    for index in range(count):
        deps = draw(st.lists(st.integers(0, index - 1), unique=True)) if index else []
        kind = draw(st.sampled_from(["plain", "foreach", "units"]))
        task: dict[str, Any] = {
            "id": f"t{index}",
            "python": "tests.unit.test_resume_property:body",
            "depends_on": [f"t{d}" for d in deps],
            "params": {"units": draw(st.integers(1, 4)) if kind == "units" else 0},
        }
        if kind == "foreach":
            task["foreach"] = [f"i{n}" for n in range(draw(st.integers(1, 3)))]
        tasks.append(task)
    # One unit at a time: the simulated kill is an exception in one thread, which cannot stop
    # units running in others, and "exactly once" holds only when nothing else was in flight.
    # Parallel runs are checked in test_parallel_resume.py (units in flight may run again).
    return {"name": "prop", "max_concurrency": 1, "tasks": tasks}


JOURNAL: list[tuple[str, str, Any]] = []
KILL_AT: list[int] = []


def body(ctx: TaskContext) -> None:
    """Journal the start, each unit (saving progress), and the end; die at the chosen step."""
    key = f"{ctx.task_id}:{ctx.item}"
    _step("start", key)
    done = ctx.progress.get() or 0
    for unit in range(done, int(ctx.params["units"])):
        _step("unit", key, unit)
        ctx.progress.save(unit + 1)
    _step("end", key)


def _step(event: str, key: str, unit: Any = None) -> None:
    """Die *before* step number KILL_AT happens (so a killed step is never journaled)."""
    if KILL_AT and len(JOURNAL) + 1 == KILL_AT[0]:
        KILL_AT.clear()
        raise Killed
    JOURNAL.append((event, key, unit))


def attempt(package: Any, store: InMemoryCheckpointStore) -> Any:
    epoch = store.next_epoch("prop", "r")
    return execute(RunRequest(package, "r", epoch=epoch, attempt=epoch), ExecutionOptions(store=store))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(definition=dags(), kill_fraction=st.floats(min_value=0, max_value=1))
def test_resume_runs_every_task_exactly_once(definition: dict[str, Any], kill_fraction: float) -> None:
    package = parse_package(definition)
    store = InMemoryCheckpointStore()
    JOURNAL.clear()
    attempt(package, store)  # a dry run measures how many steps the package takes
    total_steps = len(JOURNAL)
    JOURNAL.clear()
    KILL_AT[:] = [max(1, round(kill_fraction * total_steps))]
    killed = False
    try:
        attempt(package, store)
    except Killed:
        killed = True
    result = attempt(package, store) if killed else None
    assert result is None or result.succeeded

    ends = [key for event, key, _ in JOURNAL if event == "end"]
    expected = [f"{t.id}:{item}" for t in package.tasks for item in (t.foreach or [None])]
    assert sorted(ends) == sorted(expected), "every task (and item) finished exactly once"
    units = [(key, unit) for event, key, unit in JOURNAL if event == "unit"]
    assert len(units) == len(set(units)), "no saved unit of progress was done twice"
    position = {key: i for i, (event, key, _) in enumerate(JOURNAL) if event == "end"}
    for task in package.tasks:
        for item in task.foreach or [None]:
            first_start = next(
                i
                for i, (event, key, _) in enumerate(JOURNAL)
                if event == "start" and key == f"{task.id}:{item}"
            )
            for dep in task.depends_on:
                dep_task = package.task(dep)
                for dep_item in dep_task.foreach or [None]:
                    assert position[f"{dep}:{dep_item}"] < first_start, "dependencies first"
