"""Parallel units inside one attempt: branches, foreach concurrency, failures, stops, variables.

Concurrency is shown, not timed: units that must run at the same time meet at a
``threading.Barrier`` (with a deadline, so a sequential executor fails instead of
hanging), and a :class:`Tracker` counts the units inside at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import checkpoints.store
from checkpoints import Change, CheckpointWriter, FilesystemCheckpointStore
from orchestrator.state.states import RunState, TaskState
from tests.support import tasks as T
from tests.support.executor import Killed, package, run, task
from workers.context import TaskContext
from workers.errors import AttemptFenced
from workers.executor import ExecutionHooks

DEADLINE = 30.0


class Tracker:
    """Counts the units inside at once; ``most`` is the highest count seen."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.inside = self.most = 0

    def __enter__(self) -> Tracker:
        with self.lock:
            self.inside += 1
            self.most = max(self.most, self.inside)
        return self

    def __exit__(self, *exc: object) -> None:
        with self.lock:
            self.inside -= 1


@pytest.fixture(autouse=True)
def _log(task_log: Path) -> Path:
    """Every test logs its executions and starts with no task hooks (tests/support/executor.py)."""
    return task_log


def meet(barrier: threading.Barrier, tracker: Tracker | None = None) -> Callable[[TaskContext], None]:
    def hook(ctx: TaskContext) -> None:
        if tracker is None:
            barrier.wait()
            return
        with tracker:
            barrier.wait()

    return hook


def wait_cancelled(ctx: TaskContext) -> None:
    """Hold until the attempt is stopped (a cooperative long task), with a deadline."""
    deadline = time.monotonic() + DEADLINE
    while not ctx.cancelled:
        assert time.monotonic() < deadline, "the unit was never told to stop"
        time.sleep(0.01)  # poll; bounded by the deadline


def starts(entries: list[dict[str, Any]], event: str = "start") -> list[Any]:
    return [(e["task"], e["item"]) for e in entries if e["event"] == event]


# -- parallel branches ---------------------------------------------------------------------------


def test_independent_tasks_run_at_the_same_time(store: Any) -> None:
    barrier, tracker = threading.Barrier(8, timeout=DEADLINE), Tracker()
    for n in range(8):
        T.HOOKS[f"t{n}"] = meet(barrier, tracker)
    result = run(package(*(task(f"t{n}") for n in range(8)), max_concurrency=8), store)
    assert result.succeeded, result.error
    assert tracker.most == 8


def test_max_concurrency_bounds_the_units_in_flight(store: Any) -> None:
    barrier, tracker = threading.Barrier(3, timeout=DEADLINE), Tracker()
    for n in range(9):
        T.HOOKS[f"t{n}"] = meet(barrier, tracker)
    result = run(package(*(task(f"t{n}") for n in range(9)), max_concurrency=3), store)
    assert result.succeeded, result.error
    assert tracker.most == 3


def test_the_default_runs_four_units_at_once(store: Any) -> None:
    barrier, tracker = threading.Barrier(4, timeout=DEADLINE), Tracker()
    for n in range(8):
        T.HOOKS[f"t{n}"] = meet(barrier, tracker)
    assert run(package(*(task(f"t{n}") for n in range(8))), store).succeeded
    assert tracker.most == 4


def test_a_task_starts_as_soon_as_its_dependencies_allow(store: Any, log: Any) -> None:
    b_ran = threading.Event()

    def slow(ctx: TaskContext) -> None:
        if not b_ran.wait(DEADLINE):
            raise RuntimeError("b did not run while the independent slow task was running")

    T.HOOKS["slow"] = slow
    T.HOOKS["b"] = lambda ctx: b_ran.set()
    pkg = package(task("a"), task("slow"), task("b", "a"), task("c", "b", "slow"))
    result = run(pkg, store)
    assert result.succeeded, result.error
    position = {(e["task"], e["event"]): n for n, e in enumerate(log())}
    assert position[("b", "start")] < position[("slow", "end")] < position[("c", "start")]


def test_dependencies_still_come_first(store: Any, log: Any) -> None:
    pkg = package(task("a"), task("b", "a"), task("c", "a"), task("d", "b", "c"), max_concurrency=8)
    assert run(pkg, store).succeeded
    entries = log()
    position = {(e["task"], e["event"]): n for n, e in enumerate(entries)}
    assert (
        position[("a", "end")] < position[("b", "start")]
        and position[("a", "end")] < position[("c", "start")]
    )
    assert max(position[("b", "end")], position[("c", "end")]) < position[("d", "start")]


# -- foreach concurrency ---------------------------------------------------------------------------


def test_foreach_items_run_up_to_concurrency_at_once(store: Any) -> None:
    barrier, tracker = threading.Barrier(4, timeout=DEADLINE), Tracker()
    T.HOOKS["each"] = meet(barrier, tracker)
    pkg = package(task("each", foreach=list(range(12)), concurrency=4), max_concurrency=8)
    result = run(pkg, store)
    assert result.succeeded, result.error
    assert tracker.most == 4
    assert list(result.outputs["each"]) == [str(n) for n in range(12)]  # item order, whatever finished first


def test_foreach_items_run_one_at_a_time_in_order_by_default(store: Any, log: Any) -> None:
    tracker = Tracker()

    def one(ctx: TaskContext) -> None:
        with tracker:
            time.sleep(0.005)  # gives a second item the chance to overlap if it could

    T.HOOKS["each"] = one
    pkg = package(task("each", foreach=["c", "a", "b", "d"]), task("other"), max_concurrency=8)
    assert run(pkg, store).succeeded
    assert tracker.most == 1
    assert [i for t, i in starts(log()) if t == "each"] == ["c", "a", "b", "d"]


def test_foreach_concurrency_is_bounded_by_max_concurrency(store: Any) -> None:
    barrier, tracker = threading.Barrier(2, timeout=DEADLINE), Tracker()
    T.HOOKS["each"] = meet(barrier, tracker)
    pkg = package(task("each", foreach=list(range(6)), concurrency=5), max_concurrency=2)
    assert run(pkg, store).succeeded
    assert tracker.most == 2


# -- failures while others run ---------------------------------------------------------------------


def test_one_branch_failing_while_others_run(store: Any) -> None:
    good_running, bad_failed = threading.Event(), threading.Event()

    def good(ctx: TaskContext) -> None:
        good_running.set()
        if not bad_failed.wait(DEADLINE):
            raise RuntimeError("bad never failed")

    def bad(ctx: TaskContext) -> None:
        if not good_running.wait(DEADLINE):
            raise RuntimeError("good never started")
        bad_failed.set()
        raise RuntimeError("bad fails while good runs")

    T.HOOKS.update(good=good, bad=bad)
    pkg = package(task("bad"), task("bad_child", "bad"), task("good"), task("good_child", "good"))
    result = run(pkg, store)
    assert result.state is RunState.FAILED and "bad fails while good runs" in (result.error or "")
    assert result.tasks == {
        "bad": TaskState.FAILED,
        "bad_child": TaskState.UPSTREAM_FAILED,
        "good": TaskState.SUCCEEDED,
        "good_child": TaskState.SUCCEEDED,
    }
    assert set(store.load("pkg", "r1").tasks) == {"good", "good_child"}


def test_a_failed_item_stops_its_foreach_once_the_items_in_flight_end(store: Any, log: Any) -> None:
    barrier = threading.Barrier(3, timeout=DEADLINE)

    def item(ctx: TaskContext) -> None:
        if ctx.item < 3:
            barrier.wait()  # items 0, 1, 2 run together; 1 fails, 0 and 2 finish
        if ctx.item == 1:
            raise RuntimeError("item 1 fails")

    T.HOOKS["each"] = item
    pkg = package(
        task("each", foreach=list(range(9)), concurrency=3), task("after", "each"), max_concurrency=8
    )
    result = run(pkg, store)
    assert result.state is RunState.FAILED and "item 1 fails" in (result.error or "")
    assert result.tasks["after"] is TaskState.UPSTREAM_FAILED
    ended = {i for t, i in starts(log(), "end") if t == "each"}
    assert {0, 2} <= ended and 1 not in ended
    assert set(store.load("pkg", "r1").items["each"]) == {str(i) for i in ended}
    T.HOOKS.clear()
    before = len(log())
    assert run(pkg, store).succeeded
    rerun = {i for t, i in starts(log()[before:]) if t == "each"}
    assert rerun == set(range(9)) - ended, "only the unfinished items run again"


def test_timeouts_apply_to_every_unit_in_flight(store: Any) -> None:
    pkg = package(
        task("slow1", fn="sleepy", params={"seconds": 30}, timeout=0.3),
        task("slow2", fn="sleepy", params={"seconds": 30}, timeout=0.3),
        task("quick"),
        max_concurrency=3,
    )
    started = time.monotonic()
    result = run(pkg, store)
    assert time.monotonic() - started < 10
    assert result.state is RunState.FAILED
    assert result.tasks == {
        "slow1": TaskState.FAILED,
        "slow2": TaskState.FAILED,
        "quick": TaskState.SUCCEEDED,
    }
    assert (result.error or "").count("timed out after 0.3 s") == 2


# -- stops -------------------------------------------------------------------------------------------


def _when_started(
    log: Callable[[], list[dict[str, Any]]], count: int, then: Callable[[], None]
) -> threading.Thread:
    def watch() -> None:
        deadline = time.monotonic() + DEADLINE
        while len(starts(log())) < count and time.monotonic() < deadline:
            time.sleep(0.01)  # poll; bounded by the deadline
        then()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_cancellation_stops_every_unit_in_flight(store: Any, log: Any) -> None:
    stop = threading.Event()
    for n in range(4):
        T.HOOKS[f"t{n}"] = wait_cancelled
    pkg = package(*(task(f"t{n}") for n in range(4)), task("after", "t0"), max_concurrency=4)
    watcher = _when_started(log, 4, stop.set)
    started = time.monotonic()
    result = run(pkg, store, stop=stop)
    watcher.join(DEADLINE)
    assert time.monotonic() - started < DEADLINE
    assert result.state is RunState.CANCELLED
    assert set(result.tasks.values()) == {TaskState.CANCELLED}
    assert store.load("pkg", "r1").tasks == {}, "a unit that returned after the stop is not recorded done"
    T.HOOKS.clear()
    resumed = run(pkg, store)
    assert resumed.succeeded and resumed.skipped == []


def test_a_fenced_attempt_stops_every_unit_and_writes_nothing_afterwards(store: Any, log: Any) -> None:
    directory = store.run_dir("pkg", "r1")
    fenced: dict[str, Any] = {}

    def fence() -> None:
        store.fence("pkg", "r1", store.epoch("pkg", "r1") + 1)
        fenced["files"] = {p.name: p.read_bytes() for p in directory.iterdir()}

    def unit(ctx: TaskContext) -> None:
        wait_cancelled(ctx) if ctx.item != 0 else None

    T.HOOKS["each"] = unit
    pkg = package(task("each", foreach=list(range(5)), concurrency=5), max_concurrency=5)

    def first_item_returns_after_the_fence(ctx: TaskContext) -> None:
        if ctx.item == 0:
            deadline = time.monotonic() + DEADLINE
            while "files" not in fenced:
                assert time.monotonic() < deadline
                time.sleep(0.01)  # poll; bounded by the deadline
        else:
            wait_cancelled(ctx)

    T.HOOKS["each"] = first_item_returns_after_the_fence
    watcher = _when_started(log, 5, fence)
    with pytest.raises(AttemptFenced):
        run(pkg, store)
    watcher.join(DEADLINE)
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == fenced["files"], (
        "no write after the fence"
    )
    ends = [e for e in log() if e["event"] == "end"]
    assert len(ends) == 5, "every unit in flight ended"


def test_a_crashing_unit_stops_the_others_and_is_re_raised(store: Any, log: Any) -> None:
    def unit(ctx: TaskContext) -> None:
        if ctx.item == 0:
            deadline = time.monotonic() + DEADLINE
            while len(starts(T.read_log(T.log_path(ctx)))) < 3:
                assert time.monotonic() < deadline
                time.sleep(0.01)  # poll; bounded by the deadline
            raise Killed
        wait_cancelled(ctx)

    T.HOOKS["each"] = unit
    with pytest.raises(Killed):
        run(package(task("each", foreach=[0, 1, 2], concurrency=3)), store)
    assert store.load("pkg", "r1").items == {}


# -- group commit ---------------------------------------------------------------------------------


class CountingStore(FilesystemCheckpointStore):
    """Counts appends and the changes each carried; the first append is slow, so others queue."""

    appends: list[int]

    def open(self, checkpoint: Any) -> Any:
        writer: CheckpointWriter = super().open(checkpoint)
        self.appends = []
        append = writer.append

        def counted(changes: Any) -> int:
            if not self.appends:
                time.sleep(0.2)  # a slow disk: completions arriving meanwhile wait for the next write
            self.appends.append(len(changes))
            return append(changes)

        writer.append = counted  # type: ignore[method-assign]
        return writer


def test_completions_arriving_together_share_one_write(tmp_path: Path) -> None:
    store = CountingStore(tmp_path / "checkpoints")
    barrier = threading.Barrier(8, timeout=DEADLINE)
    T.HOOKS["each"] = meet(barrier)
    result = run(package(task("each", foreach=list(range(8)), concurrency=8), max_concurrency=8), store)
    assert result.succeeded
    records = sum(store.appends)
    assert records == 9  # 8 items and the foreach's own record
    assert len(store.appends) < records and max(store.appends) >= 2, store.appends


# -- hooks -------------------------------------------------------------------------------------------


class Exclusive(ExecutionHooks):
    """Fails if two hook calls ever overlap."""

    def __init__(self) -> None:
        self.inside = threading.Lock()
        self.overlaps = 0
        self.finished: list[tuple[str, Any]] = []

    def _enter(self) -> None:
        if not self.inside.acquire(blocking=False):
            self.overlaps += 1
            return
        time.sleep(0.001)  # widen the window an overlap would need
        self.inside.release()

    def task_started(self, task_id: str, item: Any, try_number: int) -> None:
        self._enter()

    def task_finished(self, task_id: str, item: Any, state: TaskState, seconds: float, error: Any) -> None:
        self._enter()
        self.finished.append((task_id, item))

    def checkpoint_saved(self, size: int, seconds: float, reason: str) -> None:
        self._enter()


def test_hooks_are_called_one_at_a_time(store: Any) -> None:
    hooks = Exclusive()
    pkg = package(task("each", foreach=list(range(40)), concurrency=8), max_concurrency=8)
    assert run(pkg, store, hooks=hooks).succeeded
    assert hooks.overlaps == 0
    assert len(hooks.finished) == 41


# -- compaction in a long run -----------------------------------------------------------------------


def test_a_long_foreach_compacts_its_journal_and_resumes_exactly(
    store: Any, log: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(checkpoints.store, "COMPACTION_FLOOR", 512)

    def die_at_150(ctx: TaskContext) -> None:
        if ctx.item == 150:
            raise Killed

    T.HOOKS["each"] = die_at_150
    pkg = package(task("each", foreach=list(range(200))), task("after", "each"))
    with pytest.raises(Killed):
        run(pkg, store)
    directory = store.run_dir("pkg", "r1")
    generations = sorted(int(p.stem.split("-")[1]) for p in directory.glob("snapshot-*.json"))
    assert len(generations) == 2 and generations[-1] > 5, "the journal was compacted again and again"
    # One item at a time, and an item holds its place until its record is durable.
    durable = len(store.load("pkg", "r1").items["each"])
    assert set(store.load("pkg", "r1").items["each"]) == {str(n) for n in range(150)}
    T.HOOKS.clear()
    before = len(log())
    result = run(pkg, store)
    assert result.succeeded and len(result.outputs["each"]) == 200
    assert [i for t, i in starts(log()[before:]) if t == "each"] == list(range(durable, 200))


def test_a_change_record_holds_a_unit_and_its_variable_writes_together(tmp_path: Path) -> None:
    store = FilesystemCheckpointStore(tmp_path / "checkpoints")
    counter = {"counter": {"type": "int", "default": 0}}
    pkg = package(task("each", foreach=["eu"], params={"add": 5}), variables=counter)
    assert run(pkg, store, keep_checkpoint=True).succeeded
    journal = next(store.run_dir("pkg", "r1").glob("journal-*.log")).read_bytes()
    from checkpoints import read_journal

    changes = [r.change for r in read_journal(journal).records]
    assert changes[0] == Change(
        items={"each": {"eu": {"task": "each", "item": "eu", "epoch": 1}}},
        variables={"counter": 5},
        writers={"counter": "each[eu]"},
    )


# -- what `orchestrator run` shows ----------------------------------------------------------------


def test_the_progress_display_follows_parallel_units(store: Any) -> None:
    import io

    from rich.console import Console

    from orchestrator.cli.console import ProgressDisplay

    console = Console(file=io.StringIO(), force_terminal=True, width=120)
    barrier = threading.Barrier(4, timeout=DEADLINE)
    seen: list[str] = []

    def item(ctx: TaskContext) -> None:
        barrier.wait()
        with display._lock:
            seen.append(str(display.progress.tasks[0].description))

    T.HOOKS["each"] = item
    pkg = package(
        task("each", foreach=list(range(8)), concurrency=4), task("after", "each"), max_concurrency=4
    )
    display = ProgressDisplay(pkg, console)
    with display:
        assert run(pkg, store, hooks=display).succeeded
    assert any(text.count("each[") >= 3 for text in seen), seen  # several units named at once
    bars = {str(t.description).strip(): t for t in display.progress.tasks}
    assert bars["each"].completed == bars["each"].total == 8
    assert display.progress.tasks[0].completed == 2 and display._running == {}
    output = console.file.getvalue()  # type: ignore[attr-defined]
    assert all(f"each[{n}]" in output for n in range(8))
