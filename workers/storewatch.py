"""A bound on checkpoint store operations: a hung store must not hold a run forever.

A write to a hard-mounted NFS share whose server went away, or to a stalled
disk, blocks in the kernel and cannot be interrupted. Meanwhile the attempt's
lease keeper would go on renewing the lease from its own thread, and the run
would stay stuck with nobody to notice. :class:`StoreWatch` times every
operation of the store it wraps; the lease keeper asks it
(:meth:`StoreWatch.overdue`) before each renewal, and once an operation has
run longer than ``ORCHESTRATOR_CHECKPOINT_TIMEOUT`` the keeper stops renewing
and marks the attempt lost. The scheduler then fences the run when its lease
expires and resumes it on another node; the stuck process is ended by the
fenced-attempt grace timer (:func:`workers.lease.exit_after`).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence

from checkpoints import Change, Checkpoint, CheckpointStore, CheckpointWriter

log = logging.getLogger(__name__)


class StoreWatch:
    """Times the operations of one attempt's checkpoint store."""

    def __init__(self, timeout: float, on_timeout: Callable[[str], None] | None = None) -> None:
        self.timeout = timeout
        self.on_timeout = on_timeout  # told once, with what hung: counts the timeout
        self._lock = threading.Lock()
        self._running: dict[int, tuple[str, float]] = {}
        self._ids = itertools.count()
        self._reported: str | None = None

    @contextlib.contextmanager
    def timing(self, what: str) -> Iterator[None]:
        """Count the block as one store operation named ``what``."""
        token = next(self._ids)
        with self._lock:
            self._running[token] = (what, time.monotonic())
        try:
            yield
        finally:
            with self._lock:
                del self._running[token]

    def overdue(self) -> str | None:
        """Why the attempt must be given up, if a store operation has run past the bound; else None."""
        now = time.monotonic()
        with self._lock:
            ages = [(what, now - since) for what, since in self._running.values()]
            late = [(what, age) for what, age in ages if age > self.timeout]
            if not late or self._reported is not None:
                return self._reported if late else None
            what, seconds = max(late, key=lambda pair: pair[1])
            self._reported = (
                f"checkpoint store operation {what} has not returned for {seconds:.1f} s "
                f"(ORCHESTRATOR_CHECKPOINT_TIMEOUT is {self.timeout:g} s)"
            )
            reason = self._reported
        log.error("%s: giving the attempt up", reason)
        if self.on_timeout is not None:
            self.on_timeout(reason)
        return reason

    def wrap(self, store: CheckpointStore) -> CheckpointStore:
        """``store`` with every operation (and every operation of its writers) timed."""
        return _WatchedStore(store, self)


class _WatchedStore:
    def __init__(self, store: CheckpointStore, watch: StoreWatch) -> None:
        self._store, self._watch = store, watch

    def __repr__(self) -> str:
        return repr(self._store)

    def check(self) -> None:
        with self._watch.timing("check"):
            self._store.check()

    def load(self, package: str, run_id: str, *, definition_hash: str | None = None) -> Checkpoint | None:
        with self._watch.timing("load"):
            return self._store.load(package, run_id, definition_hash=definition_hash)

    def open(self, checkpoint: Checkpoint) -> CheckpointWriter:
        with self._watch.timing("open"):
            return _WatchedWriter(self._store.open(checkpoint), self._watch)

    def save(self, checkpoint: Checkpoint) -> int:
        with self._watch.timing("save"):
            return self._store.save(checkpoint)

    def delete(self, package: str, run_id: str, *, epoch: int) -> None:
        with self._watch.timing("delete"):
            self._store.delete(package, run_id, epoch=epoch)

    def purge(self, package: str, run_id: str) -> bool:
        with self._watch.timing("purge"):
            return self._store.purge(package, run_id)

    def fence(self, package: str, run_id: str, epoch: int) -> int:
        with self._watch.timing("fence"):
            return self._store.fence(package, run_id, epoch)

    def next_epoch(self, package: str, run_id: str) -> int:
        with self._watch.timing("next_epoch"):
            return self._store.next_epoch(package, run_id)

    def epoch(self, package: str, run_id: str) -> int:
        with self._watch.timing("epoch"):
            return self._store.epoch(package, run_id)


class _WatchedWriter:
    def __init__(self, writer: CheckpointWriter, watch: StoreWatch) -> None:
        self._writer, self._watch = writer, watch

    @property
    def epoch(self) -> int:
        return self._writer.epoch

    @property
    def generation(self) -> int:
        return self._writer.generation

    @property
    def snapshot_bytes(self) -> int:
        return self._writer.snapshot_bytes

    @property
    def journal_bytes(self) -> int:
        return self._writer.journal_bytes

    def append(self, changes: Sequence[Change]) -> int:
        with self._watch.timing("append"):
            return self._writer.append(changes)

    def compact(self, checkpoint: Checkpoint) -> int:
        with self._watch.timing("compact"):
            return self._writer.compact(checkpoint)

    def close(self) -> None:
        with self._watch.timing("close"):
            self._writer.close()
