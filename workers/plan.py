"""Ready-set scheduling of one attempt: which units (task, foreach item) may start now.

A :class:`Plan` knows the package's graph, what is finished, what runs and what
failed; it holds no threads and does no I/O. The executor asks it for the next
unit (:meth:`Plan.take`) whenever a worker is free and tells it what became of
each unit. A task is ready once its precedence constraints decide that it runs
(:func:`orchestrator.packages.flow.decide`: success, failure or completion of
the tasks it names, combined by ``depends_on_mode``) and its condition, if it
has one, is true (the executor evaluates it: :meth:`Plan.conditions`); a task
whose constraints can no longer be met is skipped, and so on downstream.
Among ready units the package's declaration order wins, then item order. At
most ``package.max_concurrency`` units run at once, and at most
``task.concurrency`` items of one foreach. Event handler jobs
(:class:`HandlerJob`) go before every ready unit.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from orchestrator.packages.flow import Decision, DependsMode, Outcome, decide, handled_failures, met
from orchestrator.packages.model import ForeachItem, Package, Task, item_key


@dataclass(frozen=True)
class Unit:
    """One schedulable piece of work: a task, or one item of a foreach task."""

    task: Task
    item: ForeachItem | None = None
    handler: str | None = None  # an event handler's record key (``<job>:<handler id>``)
    event: Mapping[str, Any] | None = field(default=None, compare=False)

    @cached_property
    def key(self) -> str:
        """Where its progress is kept: ``task``, ``task:item`` or the handler's record key."""
        if self.handler is not None:
            return self.handler
        return self.task.id if self.item is None else f"{self.task.id}:{item_key(self.item)}"

    @cached_property
    def label(self) -> str:
        """How messages name it: ``task``, ``task[item]`` or the handler's record key."""
        if self.handler is not None:
            return self.handler
        return self.task.id if self.item is None else f"{self.task.id}[{item_key(self.item)}]"


@dataclass(frozen=True, eq=False)
class HandlerJob:
    """The event handlers of one section to run for one event, one after the other.

    ``key`` names the event in the checkpoint: ``on_error:<unit label>``, ``on_success``
    or ``on_finish``; a handler's record is kept under ``<key>:<handler id>``.
    """

    section: str
    key: str
    event: dict[str, Any]
    handlers: tuple[Task, ...]


def task_of(label: str) -> str:
    """The task id of a unit label (task ids never contain ``[``)."""
    return label.split("[", 1)[0]


@dataclass
class _Items:
    """The items of one ready foreach task and how far they got."""

    pending: deque[ForeachItem]
    running: int = 0
    failed: bool = False


@dataclass
class Plan:
    """The scheduling state of one attempt; every method is called under the executor's lock.

    ``recorded`` holds the outcome of every task that has a checkpoint record
    (``finished`` tasks without one there succeeded): these never run again, and
    decide their dependents as they did.
    """

    package: Package
    finished: set[str] = field(default_factory=set)
    finished_items: Mapping[str, Iterable[str]] = field(default_factory=dict)
    recorded: Mapping[str, Outcome] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.order = {task.id: position for position, task in enumerate(self.package.tasks)}
        self.dependents: dict[str, list[str]] = {task.id: [] for task in self.package.tasks}
        for task in self.package.tasks:
            for dependency in dict.fromkeys(task.upstream):
                self.dependents[dependency].append(task.id)
        self.handled = handled_failures(task.constraints for task in self.package.tasks)
        self.outcomes: dict[str, Outcome] = {}
        self.final: set[str] = set()  # outcomes with a checkpoint record: a resumed run keeps them
        self.waiting: set[str] = set()
        self.ready: list[Task] = []
        self.gated: list[Task] = []  # constraints met; the condition is to be evaluated
        self.items: dict[str, _Items] = {}
        self.jobs: deque[HandlerJob] = deque()
        self.skipped: list[tuple[str, bool]] = []  # (task, final) decided since the last drain
        self.running = 0
        for task_id in self.finished:
            self.outcomes[task_id] = self.recorded.get(task_id, Outcome.SUCCEEDED)
            self.final.add(task_id)
        for task in self.package.tasks:
            if task.id not in self.outcomes:
                self.waiting.add(task.id)
        for task in self.package.tasks:
            if task.id in self.waiting:
                self._decide(task.id)

    # -- what may start --------------------------------------------------------------

    def conditions(self) -> list[Task]:
        """Tasks whose constraints are met and whose ``when`` is to be evaluated (see :meth:`admit`)."""
        return list(self.gated)

    def admit(self, task_id: str, run: bool) -> None:
        """The condition of a gated task was evaluated: it runs, or it is skipped (for good)."""
        self.gated = [task for task in self.gated if task.id != task_id]
        if run:
            self._make_ready(task_id)
        else:
            self._ended_without_running(task_id, final=True)

    def reject(self, task_id: str) -> None:
        """A gated task whose condition could not be evaluated: the caller fails it."""
        self.gated = [task for task in self.gated if task.id != task_id]

    def drain_skipped(self) -> list[tuple[str, bool]]:
        """Tasks decided not to run since the last call: ``(task, final)``, in package order.

        ``final``: skipped for good (its checkpoint record may be written); otherwise it
        was blocked by a failure that a resumed run may undo (``upstream_failed``).
        """
        skipped, self.skipped = self.skipped, []
        return sorted(skipped, key=lambda entry: self.order[entry[0]])

    def expansions(self) -> list[Task]:
        """Ready foreach tasks whose items are not known yet (see :meth:`set_items`)."""
        return [task for task in self.ready if task.foreach is not None and task.id not in self.items]

    def set_items(self, task_id: str, items: list[ForeachItem]) -> bool:
        """The items of a ready foreach task; those finished by an earlier attempt are skipped.

        Return True when none is left to run: the foreach is over at once.
        """
        done = set(self.finished_items.get(task_id, ()))
        pending = deque(item for item in items if item_key(item) not in done)
        self.items[task_id] = _Items(pending)
        if not pending:
            self._unready(task_id)
        return not pending

    def drop(self, task_id: str) -> None:
        """A ready task that will not run after all (its items could not be listed)."""
        self._unready(task_id)

    def add_job(self, job: HandlerJob) -> None:
        """Queue an event handler job; it goes before every ready unit."""
        self.jobs.append(job)

    def take(self) -> Unit | HandlerJob | None:
        """The next unit or handler job to start now, or None (limits reached, or nothing ready)."""
        if self.running >= self.package.max_concurrency:
            return None
        if self.jobs:
            self.running += 1
            return self.jobs.popleft()
        for position, task in enumerate(self.ready):
            if task.foreach is None:
                del self.ready[position]
                self.running += 1
                return Unit(task)
            items = self.items.get(task.id)
            if items is None or items.failed or not items.pending or items.running >= task.concurrency:
                continue
            items.running += 1
            self.running += 1
            return Unit(task, items.pending.popleft())
        return None

    def available(self) -> int:
        """How many units :meth:`take` could give now (a foreach whose items are to be listed counts one)."""
        room = self.package.max_concurrency - self.running
        count = len(self.jobs)
        for task in self.ready:
            items = self.items.get(task.id)
            if task.foreach is None or items is None:
                count += 1
            elif not items.failed:
                count += min(len(items.pending), task.concurrency - items.running)
            if count >= room:
                break
        return max(0, min(count, room))

    def over(self) -> bool:
        """True when nothing runs and nothing can start any more."""
        return self.running == 0 and not self.ready and not self.jobs and not self.gated

    # -- what became of a unit ---------------------------------------------------------

    def ended(self, unit: Unit | HandlerJob, *, failed: bool = False) -> bool:
        """The unit is over (its record durable, or it failed); for an item, True if it was its
        foreach's last one. A unit holds its place until then, so a crash can only cost the
        units in flight, their records included.

        A failed item stops its foreach from starting more items; the foreach is
        over once its running items have ended, whatever became of them.
        """
        self.running -= 1
        if isinstance(unit, HandlerJob) or unit.item is None:
            return False
        items = self.items[unit.task.id]
        items.running -= 1
        items.failed = items.failed or failed
        if items.running == 0 and (items.failed or not items.pending):
            self._unready(unit.task.id)
            return True
        return False

    def task_finished(self, task_id: str) -> None:
        """The task succeeded for good (its record is durable): decide its dependents."""
        self.finished.add(task_id)
        self._set_outcome(task_id, Outcome.SUCCEEDED, final=True)

    def task_failed(self, task_id: str, *, recorded: bool) -> None:
        """The task failed; ``recorded``: its failure has a checkpoint record (a resumed run keeps it)."""
        self._set_outcome(task_id, Outcome.FAILED, final=recorded)

    def fails_package(self, task: Task) -> bool:
        """True if a failure of ``task`` fails the run: ``fail_package_on_failure`` and no task
        has a ``failure`` constraint on it (docs/control-flow.md, "The run's state")."""
        return task.fail_package_on_failure and task.id not in self.handled

    # -- deciding -------------------------------------------------------------------------

    def _set_outcome(self, task_id: str, outcome: Outcome, *, final: bool) -> None:
        self.outcomes[task_id] = outcome
        if final:
            self.final.add(task_id)
        for dependent in self.dependents[task_id]:
            if dependent in self.waiting:
                self._decide(dependent)

    def _decide(self, task_id: str) -> None:
        task = self.package.tasks[self.order[task_id]]
        decision = decide(task.constraints, task.depends_on_mode, self.outcomes)
        if decision is Decision.WAIT:
            return
        self.waiting.discard(task_id)
        if decision is Decision.SKIP:
            self._ended_without_running(task_id, final=self._skip_is_final(task))
        elif task.when is not None:
            self.gated.append(task)
        else:
            self._make_ready(task_id)

    def _skip_is_final(self, task: Task) -> bool:
        """A skip is final when the outcomes that decided it are (see :meth:`drain_skipped`)."""
        unmet = [
            c.task for c in task.constraints if c.task in self.outcomes and not met(c, self.outcomes[c.task])
        ]
        return (
            any(t in self.final for t in unmet)
            if task.depends_on_mode is DependsMode.ALL
            else all(t in self.final for t in unmet)
        )

    def _ended_without_running(self, task_id: str, *, final: bool) -> None:
        self.skipped.append((task_id, final))
        self._set_outcome(task_id, Outcome.SKIPPED, final=final)

    def _make_ready(self, task_id: str) -> None:
        task = self.package.tasks[self.order[task_id]]
        self.ready.append(task)
        self.ready.sort(key=lambda t: self.order[t.id])

    def _unready(self, task_id: str) -> None:
        self.ready = [task for task in self.ready if task.id != task_id]
