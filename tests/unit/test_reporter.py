"""The attempt reporter against an in-memory event stream: batching, threads, fencing, Redis failing."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import redis

from orchestrator.control.stream import Appended
from orchestrator.state.records import Record
from orchestrator.state.states import RunState, TaskState
from tests.support.cli import wait_until
from workers.errors import AttemptFenced
from workers.executor import RunResult
from workers.reporter import FLUSH_DELAY, AttemptReporter


class StubStream:
    """Appends to a list; can refuse (fenced) or fail (Redis away); reports a projected position."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, Record]] = []
        self.calls = 0
        self.fenced = False
        self.failing = 0
        self.projected = "0-0"
        self._lock = threading.Lock()

    def append(self, run_id: str, epoch: int, records: list[str]) -> Appended | None:
        with self._lock:
            self.calls += 1
            if self.failing:
                self.failing -= 1
                raise redis.ConnectionError("the test cut Redis off")
            if self.fenced:
                return None
            ids = []
            for raw in records:
                entry_id = f"{len(self.entries) + 1}-0"
                self.entries.append((entry_id, Record.decode(raw)))
                ids.append(entry_id)
            return Appended(ids, self.projected)


def reporter(stream: StubStream) -> AttemptReporter:
    return AttemptReporter(stream, "run-1", 3, 2, "n1")  # type: ignore[arg-type]


def done(r: AttemptReporter, task: str) -> None:
    r.task_started(task, None, 1)
    r.task_finished(task, None, TaskState.SUCCEEDED, 0.01, None)
    r.checkpoint_saved(100, 0.001, "task")


def kinds(stream: StubStream) -> list[str | None]:
    return [record.kind for _, record in stream.entries]


def test_a_task_costs_at_most_one_append_with_its_start_finish_and_checkpoint() -> None:
    stream = StubStream()
    r = reporter(stream)
    done(r, "a")
    wait_until(lambda: len(stream.entries) == 3, timeout=5, what="task a's records to be appended")
    done(r, "b")
    wait_until(lambda: len(stream.entries) == 6, timeout=5, what="task b's records to be appended")
    assert stream.calls == 2
    assert kinds(stream) == [None, "task_done", "checkpoint_saved"] * 2
    records = [record for _, record in stream.entries]
    assert [record.source for record in records] == [f"3-{n}" for n in range(1, 7)]
    assert records[0].tasks[0].state == "running" and records[1].tasks[0].seconds == 0.01
    assert all((rec.run_id, rec.epoch, rec.attempt, rec.node) == ("run-1", 3, 2, "n1") for rec in records)


class SlowStream(StubStream):
    """An append takes ``delay`` seconds, as over a slow network."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    def append(self, run_id: str, epoch: int, records: list[str]) -> Appended | None:
        time.sleep(self.delay)  # the simulated round trip itself
        return super().append(run_id, epoch, records)


def test_a_finished_task_does_not_wait_for_redis_and_later_ones_share_an_append() -> None:
    stream = SlowStream(0.2)
    r = reporter(stream)
    started = time.monotonic()
    for n in range(10):
        done(r, f"t{n}")
    assert time.monotonic() - started < 0.2  # no hook waited for a round trip
    wait_until(lambda: len(stream.entries) == 30, timeout=10, what="every record to be appended")
    assert stream.calls < 10  # what finished during an append went in the next one
    sources = [record.source for _, record in stream.entries]
    assert sources == [f"3-{n}" for n in range(1, 31)]  # in order, each once


def test_the_outcome_gets_what_an_append_in_flight_did_not_confirm() -> None:
    stream = SlowStream(0.3)
    r = reporter(stream)
    done(r, "a")
    wait_until(lambda: stream.calls or r._append_lock.locked(), timeout=5, what="the append to start")
    left = r.unprojected()  # waits for the append in flight: nothing is in neither list
    assert [record.source for record in left] == ["3-1", "3-2", "3-3"]


def test_a_start_alone_is_appended_after_the_flush_delay() -> None:
    stream = StubStream()
    r = reporter(stream)
    started = time.monotonic()
    r.task_started("long", None, 1)
    assert stream.calls == 0
    wait_until(lambda: stream.entries, timeout=5, what="the start to be appended")
    assert time.monotonic() - started >= FLUSH_DELAY * 0.9
    assert stream.entries[0][1].tasks[0].task_id == "long"


def test_a_foreach_shows_as_running_once_its_items_are_known() -> None:
    """Its items' starts are not recorded one by one: the foreach itself is running from its
    start to its task_done, with no event of its own (the run's events stay as they were)."""
    stream = StubStream()
    r = reporter(stream)
    r.foreach_started("each", 3, 1)
    for item in ("b", "c"):
        r.task_started("each", item, 1)
        r.task_finished("each", item, TaskState.SUCCEEDED, 0.01, None)
    r.task_finished("each", None, TaskState.SUCCEEDED, 0.02, None)
    r.run_finished(RunResult("run-1", "pkg", RunState.SUCCEEDED, {}))
    records = [record for _, record in stream.entries]
    assert [(rec.type, rec.kind) for rec in records] == [
        ("task", None),
        ("event", "item_done"),
        ("event", "item_done"),
        ("event", "task_done"),
    ]
    assert [(c.task_id, c.state, c.started) for c in records[0].tasks] == [("each", "running", True)]
    assert records[-1].tasks[0].state == "succeeded"


def test_hooks_from_many_threads_report_everything_once() -> None:
    stream = StubStream()
    r = reporter(stream)
    threads = [
        threading.Thread(target=lambda n=n: [done(r, f"t{n}-{i}") for i in range(20)]) for n in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    r.run_finished(RunResult("run-1", "pkg", RunState.SUCCEEDED, {}))
    sources = [record.source for _, record in stream.entries]
    assert len(sources) == len(set(sources)) == 8 * 20 * 3
    assert sorted(int(s.split("-")[1]) for s in sources) == list(range(1, 481))


def test_a_refused_append_stops_the_attempt() -> None:
    stream = StubStream()
    r = reporter(stream)
    done(r, "a")
    wait_until(lambda: len(stream.entries) == 3, timeout=5, what="task a's records to be appended")
    stream.fenced = True
    done(r, "b")  # its append, in the background, is refused
    wait_until(lambda: stream.calls == 2, timeout=5, what="task b's append")
    with pytest.raises(AttemptFenced, match="refused"):
        r.task_started("c", None, 1)
    with pytest.raises(AttemptFenced):
        r.handler_finished("h:1", "h", TaskState.SUCCEEDED, 0.1, None)
    assert kinds(stream) == [None, "task_done", "checkpoint_saved"]


def test_records_redis_did_not_take_are_kept_and_sent_later() -> None:
    stream = StubStream()
    r = reporter(stream)
    stream.failing = 2
    done(r, "a")
    wait_until(lambda: stream.calls == 1, timeout=5, what="the first append")
    done(r, "b")  # both appends fail: nothing is lost, nothing raised
    wait_until(lambda: stream.calls == 2, timeout=5, what="the second append")
    assert stream.entries == []
    assert [record.kind for record in r.unprojected()] == [None, "task_done", "checkpoint_saved"] * 2
    done(r, "c")
    wait_until(lambda: len(stream.entries) == 9, timeout=5, what="everything to be appended")
    assert kinds(stream) == [None, "task_done", "checkpoint_saved"] * 3


def test_what_sql_holds_is_forgotten_and_the_rest_kept_for_the_outcome() -> None:
    stream = StubStream()
    r = reporter(stream)
    done(r, "a")
    wait_until(lambda: len(stream.entries) == 3, timeout=5, what="task a's records to be appended")
    stream.projected = "3-0"  # the projection has written the first three entries
    done(r, "b")
    wait_until(lambda: len(stream.entries) == 6, timeout=5, what="task b's records to be appended")
    left = r.unprojected()
    assert [record.source for record in left] == ["3-4", "3-5", "3-6"]


def test_a_resume_lists_the_skipped_tasks_and_marks_them_succeeded() -> None:
    stream = StubStream()
    r = reporter(stream)
    r.run_started("run-1", True, ["a", "b"])
    r.run_finished(RunResult("run-1", "pkg", RunState.SUCCEEDED, {}))
    (entry,) = stream.entries
    record: Any = entry[1]
    assert (record.kind, record.detail) == ("resumed", {"skipped": 2, "tasks": ["a", "b"]})
    assert [(c.task_id, c.state, c.create_only) for c in record.tasks] == [
        ("a", "succeeded", True),
        ("b", "succeeded", True),
    ]


def test_the_flusher_is_told_once_per_append_unless_a_record_is_due_sooner(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import workers.reporter as module

    told: list[float] = []
    real = module._Flusher.schedule

    def counted(self: Any, reporter: AttemptReporter, due: float) -> None:
        told.append(due)
        real(self, reporter, due)

    monkeypatch.setattr(module._Flusher, "schedule", counted)
    monkeypatch.setattr(module, "ITEM_DELAY", 1.0)
    stream = StubStream()
    r = reporter(stream)
    for _ in range(100):  # a long foreach's saves: the first tells the flusher, the rest ride along
        r.checkpoint_saved(10, 0.001, "item")
    assert len(told) == 1
    wait_until(lambda: len(stream.entries) == 100, timeout=5, what="the saves to be appended")
    assert stream.calls == 1
    r.task_started("t", None, 1)  # a new buffer: told again
    r.checkpoint_saved(10, 0.001, "item")  # due later than the start: not told
    assert len(told) == 2
    r.checkpoint_saved(10, 0.001, "task")  # due sooner: told
    assert len(told) == 3 and told[2] < told[1]
    wait_until(lambda: len(stream.entries) == 103, timeout=5, what="the rest to be appended")


def test_a_reporter_whose_id_an_ended_one_had_is_still_flushed() -> None:
    """An ended attempt's reporter can go while the flusher still holds it (due soon), and the
    next reporter is often given its id. The new one's records must still be appended when due."""
    streams = []
    kept = []
    for _ in range(20):
        gone = reporter(StubStream())
        gone.task_started("t", None, 1)  # scheduled, then the reporter goes
        del gone
        stream = StubStream()
        r = reporter(stream)  # often at the address (the id) the one gone had
        r.task_started("t", None, 1)  # due a little after the one gone
        streams.append(stream)
        kept.append(r)
    wait_until(lambda: all(len(s.entries) == 1 for s in streams), timeout=5, what="every record appended")
