"""What an attempt reports while it runs: records appended to the event stream, fenced by its epoch.

No SQL while tasks run. The :class:`AttemptReporter` turns the executor's
hooks into :class:`~orchestrator.state.records.Record`\\ s and appends them in
batches with one fenced script call (:class:`~orchestrator.control.stream.EventStream`):

* a finished task, and the checkpoint write that records it, are appended
  together within :data:`SOON_DELAY` of that write, by the process's flusher
  thread: the unit that finished goes on at once, and what finishes meanwhile
  (or while an append is in flight) goes in the same append (at most one Redis
  call per task); a finished foreach item waits up to :data:`ITEM_DELAY`, so
  that a long foreach of short items appends a few dozen items at a time;
* a task's start (a foreach's: when its items are known; and a resume) waits
  at most :data:`FLUSH_DELAY` for the next append, so a long task shows as
  running at once and a short one costs no call of its own;
* a line a task logs is appended before ``ctx.log`` returns (one Redis call per
  line), so the lines written before a node is SIGKILLed are in the stream;
* a refused append (the attempt was fenced) stops the attempt: the next hook
  raises :class:`~workers.errors.AttemptFenced` (the checkpoint store refuses the
  fenced attempt's next write by itself, whichever comes first);
* an append that fails (Redis away) keeps its records and is tried again
  with the next one; the lease decides whether the attempt may go on.

The reporter remembers what it appended until the projection has written it
to SQL (each append returns the projected position), and the attempt's
outcome transaction writes whatever is left (:meth:`unprojected`), so a
finished run's timeline is complete in SQL even if Redis then loses its data.
Hooks may be called from several threads: every method takes the lock. Appends
are serialised by a second lock, taken first and held over the Redis call, so
that hooks only wait for the buffer, never for Redis (but for the lines a task
logs, handlers that ended and the run's end, which are appended before the
hook returns).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import weakref
from typing import Any

import redis

from orchestrator.control.stream import EventStream, parse_id
from orchestrator.packages.model import ForeachItem
from orchestrator.state.records import Record, TaskChange
from orchestrator.state.states import TaskState
from orchestrator.state.tasklogs import LOG, log_detail
from workers.errors import AttemptFenced
from workers.executor import ExecutionHooks, RunResult

log = logging.getLogger(__name__)

FLUSH_DELAY = 0.05
"""Seconds a record may wait for company before it is appended on its own."""
SOON_DELAY = 0.005
"""Seconds the records of a finished unit wait for company: a long foreach's items, finishing
every fraction of a millisecond, share one append instead of waking the flusher for each."""
ITEM_DELAY = 0.02
"""Seconds a finished foreach item's records wait for company: items of a few hundred microseconds
share an append by the dozen (each append costs the attempt's process a Redis call and the
records' encoding, under the interpreter lock the items' threads need)."""


_TASK_EVENTS = {
    TaskState.SUCCEEDED: "task_done",
    TaskState.SKIPPED: "task_skipped",
    TaskState.FAILED: "task_failed",
}


class AttemptReporter(ExecutionHooks):
    """Execution hooks that report one attempt through the event stream (see the module docstring)."""

    def __init__(self, stream: EventStream, run_id: str, epoch: int, attempt: int, node: str) -> None:
        self.stream = stream
        self.run_id, self.epoch, self.attempt, self.node = run_id, epoch, attempt, node
        self._lock = threading.Lock()  # the buffers below
        self._append_lock = threading.Lock()  # one append at a time, in order; taken before _lock
        self._seq = 0
        self._buffer: list[Record] = []  # not appended yet
        self._sent: list[tuple[tuple[int, int], Record]] = []  # appended, maybe not in SQL yet
        self._fenced: AttemptFenced | None = None
        self._due = math.inf  # when the flusher appends the buffer (monotonic; inf: not scheduled)
        self.appends = 0

    # -- hooks -------------------------------------------------------------------------

    def run_started(self, run_id: str, resumed: bool, skipped: list[str]) -> None:
        if resumed:
            changes = tuple(TaskChange(t, state=TaskState.SUCCEEDED.value, create_only=True) for t in skipped)
            self._add("event", "resumed", {"skipped": len(skipped), "tasks": skipped}, changes)

    def task_started(self, task_id: str, item: ForeachItem | None, try_number: int) -> None:
        if item is None:
            change = TaskChange(task_id, state=TaskState.RUNNING.value, tries=try_number, started=True)
            self._add("task", None, {}, (change,))

    def foreach_started(self, task_id: str, items: int, finished: int) -> None:
        # A foreach's units are its items, whose starts are not recorded one by one: the task
        # itself shows as running from here until its task_done (or failure) record.
        change = TaskChange(task_id, state=TaskState.RUNNING.value, started=True)
        self._add("task", None, {}, (change,))

    def task_finished(
        self, task_id: str, item: ForeachItem | None, state: TaskState, seconds: float, error: str | None
    ) -> None:
        if item is not None:
            if state is TaskState.SUCCEEDED:
                self._add("event", "item_done", {"task": task_id, "item": item}, ())
            return
        detail: dict[str, Any] = {"task": task_id, "seconds": round(seconds, 3)}
        if error:
            detail["error"] = error
        kind = _TASK_EVENTS.get(state, "task_failed")
        change = TaskChange(task_id, state=state.value, seconds=seconds, error=error)
        self._add("event", kind, detail, (change,))

    def copy_progress(self, task_id: str, item: ForeachItem | None, detail: dict[str, Any]) -> None:
        where = {"task": task_id} if item is None else {"task": task_id, "item": item}
        self._add("event", "copy_progress", {**where, **detail}, ())

    def handler_finished(
        self, key: str, handler: str, state: TaskState, seconds: float, error: str | None
    ) -> None:
        """``handler_done``, ``handler_failed`` or ``handler_skipped``; the handler's row (by its id)
        shows its last run. Sent at once: a resumed run does not run an ended handler again, so
        a record lost with its node would never be sent."""
        job = key.rsplit(":", 1)[0]
        detail: dict[str, Any] = {"handler": handler, "job": job, "seconds": round(seconds, 3)}
        if error:
            detail["error"] = error
        kind = "handler_" + _TASK_EVENTS.get(state, "task_failed").removeprefix("task_")
        change = TaskChange(handler, state=state.value, seconds=seconds, error=error)
        self._add("event", kind, detail, (change,), flush=True)

    def task_log(
        self, task_id: str, item: ForeachItem | None, try_number: int, level: str, message: str
    ) -> None:
        """Append the line now (with whatever is buffered): a line logged before a SIGKILL is kept.

        A fenced attempt's lines are refused, like its other records; the attempt is
        being stopped (its next hook raises), so the line is not raised into the task.
        """
        with self._lock:
            if self._fenced is not None:
                return
            self._buffer.append(
                self._record(LOG, None, log_detail(task_id, item, try_number, level, message), ())
            )
        self._flush()

    def checkpoint_saved(self, size: int, seconds: float, reason: str) -> None:
        if reason in ("task", "item"):
            delay = ITEM_DELAY if reason == "item" else SOON_DELAY
            self._add("event", "checkpoint_saved", {"bytes": size}, (), delay=delay)

    def run_finished(self, result: RunResult) -> None:
        self._flush()

    # -- the buffer --------------------------------------------------------------------

    def unprojected(self) -> list[Record]:
        """Every record of this attempt that may not be in SQL yet, in order (once the append
        in flight, if any, has returned)."""
        with self._append_lock, self._lock:
            return [record for _, record in self._sent] + list(self._buffer)

    def flush(self) -> None:
        """Append what is buffered now (the background flusher calls it)."""
        self._flush()

    def _add(
        self,
        type_: str,
        kind: str | None,
        detail: dict[str, Any],
        tasks: tuple[TaskChange, ...],
        *,
        flush: bool = False,
        delay: float = FLUSH_DELAY,
    ) -> None:
        """Buffer a record; append it now (``flush``), else within ``delay`` seconds."""
        due = time.monotonic() + delay
        with self._lock:
            if self._fenced is not None:
                raise self._fenced
            self._buffer.append(self._record(type_, kind, detail, tasks))
            sooner = not flush and due < self._due  # else the buffer goes out soon enough already
            if sooner:
                self._due = due
        if flush:
            self._flush()
            if self._fenced is not None:
                raise self._fenced
        elif sooner:
            _flusher().schedule(self, due)

    def _record(
        self, type_: str, kind: str | None, detail: dict[str, Any], tasks: tuple[TaskChange, ...]
    ) -> Record:
        """The attempt's next record (the lock is held)."""
        self._seq += 1
        return Record(
            type_,
            self.run_id,
            self.epoch,
            self.attempt,
            self.node,
            self._seq,
            time.time(),
            kind,
            detail,
            tasks,
        )

    def _flush(self) -> None:
        """Append the buffer in one call; the records stay buffered if Redis fails."""
        with self._append_lock:
            with self._lock:
                self._due = math.inf  # what is buffered from now on schedules its own append
                if not self._buffer or self._fenced is not None:
                    return
                batch, self._buffer = self._buffer, []
            try:
                appended = self.stream.append(self.run_id, self.epoch, [r.encode() for r in batch])
            except redis.RedisError as exc:
                with self._lock:
                    self._buffer[:0] = batch
                log.warning("events of run %s not appended yet (kept, retried): %s", self.run_id, exc)
                return
            with self._lock:
                self.appends += 1
                if appended is None:
                    self._buffer[:0] = batch
                    self._fenced = AttemptFenced(
                        f"attempt {self.attempt} of run {self.run_id!r}: "
                        "events refused (a newer epoch exists)"
                    )
                    return
                self._sent.extend(zip((parse_id(i) for i in appended.ids), batch, strict=True))
                projected = parse_id(appended.projected)
                if self._sent and self._sent[0][0] <= projected:
                    self._sent = [(at, record) for at, record in self._sent if at > projected]


class _Flusher(threading.Thread):
    """One thread per process that appends the reporters' buffered records when they are due."""

    def __init__(self) -> None:
        super().__init__(name="event-flusher", daemon=True)
        self.pid = os.getpid()
        self._cond = threading.Condition()
        # Held weakly: an ended attempt's reporter leaves with its entry (keyed by its id, the
        # entry would be taken for that of a new reporter given the same id, never flushed).
        self._due: weakref.WeakKeyDictionary[AttemptReporter, float] = weakref.WeakKeyDictionary()

    def schedule(self, reporter: AttemptReporter, due: float) -> None:
        """Flush ``reporter`` at ``due`` (:func:`time.monotonic`; sooner if it was already due sooner)."""
        with self._cond:
            current = self._due.get(reporter)
            if current is None or due < current:
                self._due[reporter] = due
                self._cond.notify()

    def run(self) -> None:
        while True:
            with self._cond:
                first = min(self._due.values(), default=None)
                if first is None:
                    self._cond.wait()
                    continue
                wait = first - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                now = time.monotonic()
                reporters = [reporter for reporter, due in list(self._due.items()) if due <= now]
                for reporter in reporters:
                    del self._due[reporter]
            for reporter in reporters:
                self._flush(reporter)

    @staticmethod
    def _flush(reporter: AttemptReporter) -> None:
        try:
            reporter.flush()
        except Exception:
            # Kept buffered; the attempt's next append or its outcome carries the records.
            log.exception("appending the events of run %s failed", reporter.run_id)


_current: list[_Flusher] = []
_current_lock = threading.Lock()


def _flusher() -> _Flusher:
    """The process's flusher thread (a new one after a fork: threads do not survive it)."""
    current = _current[0] if _current else None
    if current is not None and current.pid == os.getpid():  # the common case, without the lock
        return current
    with _current_lock:
        if not _current or _current[0].pid != os.getpid():
            _current[:] = [_Flusher()]
            _current[0].start()
        return _current[0]
