"""Keeping a run's lease and a node's heartbeat alive from background threads.

Both threads only talk to Redis, so they keep going while a task holds the
CPU in pure Python (the GIL is released on socket I/O and every few
milliseconds otherwise).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from orchestrator.control.liveness import Claim, Liveness
from workers.errors import AttemptFenced

log = logging.getLogger(__name__)


class LeaseKeeper(threading.Thread):
    """Renews one attempt's lease every ``interval`` seconds until stopped.

    ``check`` is the executor's guard: it raises :class:`AttemptFenced` once the
    lease is known lost (renewal refused: a newer epoch exists) or can no
    longer be proven (no successful renewal for a whole TTL, e.g. Redis away).
    On loss it sets ``stop`` so the executor stops at once, and calls
    ``on_lost`` (a worker process uses it to exit if the task does not stop);
    what ``on_lost`` returns, if anything, is called when the keeper is stopped
    (the attempt ended), to disarm it.
    A requested cancellation sets ``stop`` too, with ``cancelled`` true.
    ``hung``, asked before each renewal, says why the attempt must be given up
    although its lease could be renewed (a checkpoint store operation that never
    returns, :class:`~workers.storewatch.StoreWatch`): the keeper then stops
    renewing and the attempt is lost as above.
    """

    def __init__(
        self,
        liveness: Liveness,
        *,
        run_id: str,
        epoch: int,
        attempt: int,
        node: str,
        interval: float,
        ttl: float,
        stop: threading.Event,
        on_lost: Callable[[], Callable[[], None] | None] | None = None,
        hung: Callable[[], str | None] | None = None,
    ) -> None:
        super().__init__(name=f"lease-{run_id}", daemon=True)
        self.hung = hung
        self.liveness = liveness
        self.run_id, self.epoch, self.attempt, self.node = run_id, epoch, attempt, node
        self.interval, self.ttl = interval, ttl
        self.stop_run = stop
        self.on_lost = on_lost
        self._disarm: Callable[[], None] | None = None
        self.last_renewed = time.monotonic()
        self.lost = False
        self.cancelled = False
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.interval):
            self._renew_once()
            if self.lost:
                return

    def _renew_once(self) -> None:
        why = self.hung() if self.hung is not None else None
        if why is not None:
            self._lose(why)
            return
        try:
            status = self.liveness.renew(self.run_id, self.epoch, self.node, self.attempt)
        except redis.RedisError as exc:
            if time.monotonic() - self.last_renewed > self.ttl:
                self._lose(f"no lease renewal for {self.ttl:g} s (Redis: {exc})")
            else:
                log.warning("lease renewal of run %s failed, retrying: %s", self.run_id, exc)
            return
        if status is Claim.STALE:
            self._lose("the run was fenced by a newer attempt")
            return
        self.last_renewed = time.monotonic()
        if status is Claim.CANCELLED and not self.cancelled:
            log.info("cancellation of run %s requested; stopping the attempt", self.run_id)
            self.cancelled = True
            self.stop_run.set()

    def _lose(self, why: str) -> None:
        log.warning("attempt %d of run %s lost its lease: %s", self.attempt, self.run_id, why)
        self.lost = True
        self.stop_run.set()
        if self.on_lost is not None and not self._done.is_set():
            self._disarm = self.on_lost()

    def check(self) -> None:
        """Raise :class:`AttemptFenced` unless the lease is still held."""
        if self.lost:
            raise AttemptFenced(f"attempt {self.attempt} of run {self.run_id!r} lost its lease")
        if time.monotonic() - self.last_renewed > self.ttl:
            # The renewal thread may not have run yet (the process was stopped, say):
            # without a renewal within the TTL the lease cannot be trusted.
            self.lost = True
            self.stop_run.set()
            raise AttemptFenced(
                f"attempt {self.attempt} of run {self.run_id!r}: no lease renewal for {self.ttl:g} s"
            )

    def stop(self) -> None:
        self._done.set()
        if self.is_alive() and self is not threading.current_thread():
            self.join(self.interval + 5)
        if self._disarm is not None:
            # The attempt ended: whatever this process runs next must not be ended for it.
            self._disarm()


def exit_after(grace: float) -> Callable[[], Callable[[], None]]:
    """An ``on_lost`` callback that ends the process if the attempt is still running after ``grace``.

    A Python task that never saves progress cannot be interrupted from another
    thread; ending the worker process is the only way to stop it "at once".
    The pool replaces the process; the attempt's message was acknowledged
    already, so nothing is redelivered. The returned disarm (``timer.cancel``)
    is called by :meth:`LeaseKeeper.stop` when the attempt did end in time.
    """

    def arm() -> Callable[[], None]:
        timer = threading.Timer(grace, _exit_now)
        timer.daemon = True
        timer.start()
        return timer.cancel

    return arm


def _exit_now() -> None:
    log.error("fenced attempt did not stop within its grace period; ending the worker process")
    logging.shutdown()
    os._exit(75)


class NodeHeartbeat(threading.Thread):
    """Announces a worker node alive every ``interval`` seconds (Redis server time)."""

    def __init__(self, liveness: Liveness, node: str, info: dict[str, Any], interval: float) -> None:
        super().__init__(name=f"heartbeat-{node}", daemon=True)
        self.liveness, self.node, self.info, self.interval = liveness, node, info, interval
        self._done = threading.Event()
        self._beating = threading.Lock()  # the node's one connection, from this thread and Celery's

    def beat(self) -> None:
        with self._beating:
            self.liveness.heartbeat(self.node, self.info)

    def run(self) -> None:
        while not self._done.wait(self.interval):
            try:
                self.beat()
            except redis.RedisError as exc:
                log.warning("heartbeat of node %s failed, retrying: %s", self.node, exc)

    def stop(self, *, leave: bool = True) -> None:
        self._done.set()
        if leave:
            try:
                self.liveness.node_gone(self.node)
            except redis.RedisError as exc:
                log.warning("node %s could not announce its departure: %s", self.node, exc)
