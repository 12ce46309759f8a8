"""Group commit: the checkpoint changes of units finishing together share one durable write.

Threads :meth:`~GroupCommit.submit` their changes (under the run's lock, so the
journal's order is the order in which the run's state changed) and then
:meth:`~GroupCommit.wait` for them to be durable. The first waiter to find no
write in progress becomes the *leader*: it takes every change queued so far
and appends them in one call (one ``fsync``); the others wait for it, and the
next leader takes what was queued meanwhile. Under load a write carries many
changes; alone, a change costs one write and no handoff to another thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from checkpoints import Change, Checkpoint, CheckpointWriter, needs_compaction


@dataclass
class Ticket:
    """Changes submitted together, and the outcome of the write that carried them."""

    changes: Sequence[Change]
    done: bool = False
    size: int = 0
    seconds: float = 0.0
    error: BaseException | None = field(default=None, repr=False)


class GroupCommit:
    """Appends the changes of several threads to one writer, as few writes as it can."""

    def __init__(self, writer: CheckpointWriter, before_write: Callable[[], None]) -> None:
        self.writer = writer
        self._before_write = before_write  # raises to refuse the write (the attempt was fenced)
        self._cond = threading.Condition()
        self._queue: list[Ticket] = []
        self._writing = False

    def submit(self, changes: Sequence[Change]) -> Ticket:
        """Queue ``changes``; call under the run's lock, in the order the state changed."""
        ticket = Ticket(changes)
        with self._cond:
            self._queue.append(ticket)
        return ticket

    def wait(self, ticket: Ticket) -> Ticket:
        """Return once ``ticket``'s changes are durable; raise what their write raised."""
        with self._cond:
            while not ticket.done:
                if self._writing:
                    self._cond.wait()
                    continue
                batch, self._queue = self._queue, []
                self._writing = True
                self._cond.release()
                try:
                    self._write(batch)
                finally:
                    self._cond.acquire()
                    self._writing = False
                    self._cond.notify_all()
        if ticket.error is not None:
            raise ticket.error
        return ticket

    def compaction_due(self) -> bool:
        return needs_compaction(self.writer)

    def compact(self, snapshot: Callable[[], Checkpoint]) -> Ticket:
        """Write everything queued, then a new snapshot; call under the run's lock.

        Holding the run's lock, nothing new is submitted, so the snapshot is the
        state with exactly the journal's records applied.
        """
        self.wait(self.submit(()))
        with self._cond:
            while self._writing:
                self._cond.wait()
            self._writing = True
        ticket = Ticket(())
        started = time.perf_counter()
        try:
            self._before_write()
            ticket.size = self.writer.compact(snapshot())
        finally:
            ticket.seconds = time.perf_counter() - started
            ticket.done = True
            with self._cond:
                self._writing = False
                self._cond.notify_all()
        return ticket

    def _write(self, batch: list[Ticket]) -> None:
        """Append a batch (the caller is the leader: no lock held, nobody else writing)."""
        started = time.perf_counter()
        size, error = 0, None
        try:
            self._before_write()
            size = self.writer.append([change for ticket in batch for change in ticket.changes])
        except BaseException as exc:  # handed to every waiter of the batch, re-raised there
            error = exc
        seconds = time.perf_counter() - started
        for ticket in batch:
            ticket.size, ticket.seconds, ticket.error, ticket.done = size, seconds, error, True
