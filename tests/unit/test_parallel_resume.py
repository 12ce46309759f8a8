"""Property: a parallel run killed at a random point resumes without redoing acknowledged work.

Random DAGs run with several units at once. The "kill" is an exception raised
by whichever unit reaches the chosen step; from then on every step of every
unit of that attempt raises too (the process is dead: nothing more happens in
it). What the checkpoint holds after the kill is what was acknowledged. The
resumed attempt must then start no unit the checkpoint records as finished,
resume every unit from its saved progress, and finish everything else.
"""

from __future__ import annotations

import threading
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
    count = draw(st.integers(min_value=1, max_value=7))
    tasks = []
    for index in range(count):
        deps = draw(st.lists(st.integers(0, index - 1), unique=True, max_size=2)) if index else []
        kind = draw(st.sampled_from(["plain", "foreach", "units"]))
        task: dict[str, Any] = {
            "id": f"t{index}",
            "python": "tests.unit.test_parallel_resume:body",
            "depends_on": [f"t{d}" for d in deps],
            "params": {"units": draw(st.integers(1, 3)) if kind != "plain" else 0},
        }
        if kind == "foreach":
            task["foreach"] = [f"i{n}" for n in range(draw(st.integers(1, 5)))]
            task["concurrency"] = draw(st.integers(1, 3))
        tasks.append(task)
    return {"name": "prop", "max_concurrency": draw(st.integers(2, 4)), "tasks": tasks}


class Journal:
    """Steps of every unit, per epoch; the kill makes every later step of that epoch raise."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self, kill_at: int | None = None) -> None:
        self.steps: list[tuple[int, str, str, Any]] = []
        self.kill_at = kill_at
        self.dead = False

    def step(self, epoch: int, event: str, key: str, unit: Any = None) -> None:
        with self.lock:
            if self.dead or (self.kill_at is not None and len(self.steps) + 1 >= self.kill_at):
                self.dead = True
                raise Killed
            self.steps.append((epoch, event, key, unit))


JOURNAL = Journal()


def body(ctx: TaskContext) -> None:
    key = f"{ctx.task_id}:{ctx.item}"
    JOURNAL.step(ctx.epoch, "start", key)
    done = ctx.progress.get() or 0
    for unit in range(done, int(ctx.params["units"])):
        JOURNAL.step(ctx.epoch, "unit", key, unit)
        ctx.progress.save(unit + 1)
    JOURNAL.step(ctx.epoch, "end", key)


def attempt(package: Any, store: InMemoryCheckpointStore) -> Any:
    epoch = store.next_epoch("prop", "r")
    return execute(RunRequest(package, "r", epoch=epoch, attempt=epoch), ExecutionOptions(store=store))


@settings(max_examples=80, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(definition=dags(), kill_fraction=st.floats(min_value=0, max_value=1))
def test_a_killed_parallel_run_resumes_without_redoing_acknowledged_work(
    definition: dict[str, Any], kill_fraction: float
) -> None:
    package = parse_package(definition)
    units = [f"{t.id}:{item}" for t in package.tasks for item in (t.foreach or [None])]
    JOURNAL.reset()
    attempt(package, InMemoryCheckpointStore())  # a dry run counts the steps
    JOURNAL.reset(kill_at=max(1, round(kill_fraction * len(JOURNAL.steps))))
    store = InMemoryCheckpointStore()
    try:
        attempt(package, store)
        return  # the kill point was past the last step
    except Killed:
        pass
    kept = store.load("prop", "r")
    finished = set()
    if kept is not None:
        finished = {f"{t}:None" for t in kept.tasks}
        finished |= {f"{t}:{i}" for t, items in kept.items.items() for i in items}
        finished |= {f"{t.id}:{i}" for t in package.tasks if t.id in kept.tasks for i in t.foreach or []}
    progress = {} if kept is None else dict(kept.progress)
    JOURNAL.kill_at, JOURNAL.dead = None, False
    result = attempt(package, store)
    assert result.succeeded, result.error

    second = [(event, key, unit) for epoch, event, key, unit in JOURNAL.steps if epoch == 2]
    restarted = {key for event, key, _ in second if event == "start"}
    assert not restarted & finished, "a unit the checkpoint recorded as finished ran again"
    assert {key for _, event, key, _ in JOURNAL.steps if event == "end"} == set(units), "everything finished"
    assert restarted == set(units) - finished, "every unfinished unit ran once more, and only those"
    for key, saved in progress.items():
        unit_key = key if ":" in key else f"{key}:None"
        total = int(package.task(unit_key.split(":")[0]).params["units"])
        redone = [unit for event, k, unit in second if event == "unit" and k == unit_key]
        assert redone == list(range(saved, total)), f"{unit_key} did not resume at its saved progress {saved}"
