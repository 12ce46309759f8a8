"""Ready-set scheduling of one attempt: which units (task, foreach item) may start now.

A :class:`Plan` knows the package's graph, what is finished, what runs and what
failed; it holds no threads and does no I/O. The executor asks it for the next
unit (:meth:`Plan.take`) whenever a worker is free and tells it what became of
each unit. A task is ready as soon as every task it depends on has finished
(succeeded, or failed without failing the package); among ready units the
package's declaration order wins, then item order. At most
``package.max_concurrency`` units run at once, and at most ``task.concurrency``
items of one foreach.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property

from orchestrator.packages.model import ForeachItem, Package, Task, item_key


@dataclass(frozen=True)
class Unit:
    """One schedulable piece of work: a task, or one item of a foreach task."""

    task: Task
    item: ForeachItem | None = None

    @cached_property
    def key(self) -> str:
        """Where its progress is kept: ``task`` or ``task:item``."""
        return self.task.id if self.item is None else f"{self.task.id}:{item_key(self.item)}"

    @cached_property
    def label(self) -> str:
        """How messages name it: ``task`` or ``task[item]``."""
        return self.task.id if self.item is None else f"{self.task.id}[{item_key(self.item)}]"


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
    """The scheduling state of one attempt; every method is called under the executor's lock."""

    package: Package
    finished: set[str] = field(default_factory=set)
    finished_items: Mapping[str, Iterable[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.order = {task.id: position for position, task in enumerate(self.package.tasks)}
        self.dependents: dict[str, list[str]] = {task.id: [] for task in self.package.tasks}
        self.waiting: dict[str, int] = {}
        for task in self.package.tasks:
            for dependency in task.depends_on:
                self.dependents[dependency].append(task.id)
            if task.id not in self.finished:
                self.waiting[task.id] = sum(d not in self.finished for d in task.depends_on)
        self.ready: list[Task] = []
        self.items: dict[str, _Items] = {}
        self.failed: set[str] = set()
        self.blocked: set[str] = set()
        self.running = 0
        for task in self.package.tasks:
            if self.waiting.get(task.id) == 0:
                self._make_ready(task.id)

    # -- what may start --------------------------------------------------------------

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

    def take(self) -> Unit | None:
        """The next unit to start now, or None (limits reached, or nothing ready)."""
        if self.running >= self.package.max_concurrency:
            return None
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
        count = 0
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
        return self.running == 0 and not self.ready

    # -- what became of a unit ---------------------------------------------------------

    def ended(self, unit: Unit, *, failed: bool = False) -> bool:
        """The unit is over (its record durable, or it failed); for an item, True if it was its
        foreach's last one. A unit holds its place until then, so a crash can only cost the
        units in flight, their records included.

        A failed item stops its foreach from starting more items; the foreach is
        over once its running items have ended, whatever became of them.
        """
        self.running -= 1
        if unit.item is None:
            return False
        items = self.items[unit.task.id]
        items.running -= 1
        items.failed = items.failed or failed
        if items.running == 0 and (items.failed or not items.pending):
            self._unready(unit.task.id)
            return True
        return False

    def task_finished(self, task_id: str) -> None:
        """The task finished for good (its record is durable): release its dependents."""
        self.finished.add(task_id)
        for dependent in self.dependents[task_id]:
            if dependent in self.waiting:
                self.waiting[dependent] -= 1
                if self.waiting[dependent] == 0:
                    self._make_ready(dependent)

    def task_failed(self, task_id: str) -> list[str]:
        """The task failed the package: every task downstream of it will not run; return them."""
        self.failed.add(task_id)
        blocked: list[str] = []
        pending = list(self.dependents[task_id])
        while pending:
            dependent = pending.pop()
            if dependent not in self.blocked and dependent in self.waiting:
                self.blocked.add(dependent)
                del self.waiting[dependent]
                blocked.append(dependent)
                pending.extend(self.dependents[dependent])
        return sorted(blocked, key=self.order.__getitem__)

    def _make_ready(self, task_id: str) -> None:
        del self.waiting[task_id]
        task = self.package.tasks[self.order[task_id]]
        self.ready.append(task)
        self.ready.sort(key=lambda t: self.order[t.id])

    def _unready(self, task_id: str) -> None:
        self.ready = [task for task in self.ready if task.id != task_id]
