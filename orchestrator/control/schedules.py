"""Firing schedules: every scheduler evaluates them, and each slot starts one run, once.

Each evaluation (about once a second, on the Redis server's clock) takes the
schedules whose next slot is due, claims each one in SQL (a short claim that
expires: :mod:`orchestrator.state.schedules`), plans its due slots by its
catch-up policy (:func:`~orchestrator.control.slots.plan`), and handles them in
order, moving the cursor past each slot once it is handled. Late slots (catch-up
after downtime) wait until every due schedule's on-time slots have fired in that
evaluation: one schedule's backlog never makes another's slots late.

A slot fires as a submission through the scheduler's own path
(:meth:`~orchestrator.control.scheduler.Scheduler.submit`) with the run id
``<schedule>-<slot, e.g. 20261125T020000Z>`` and the idempotency key
``schedule:<schedule>:<slot, ISO 8601 UTC>``. The cursor only ever stops on a
slot not yet handled, and is moved over missed slots *before* the next slot
fires, so the only slot whose run may exist without the cursor having moved on
is the one at the cursor (or the one waiting, overlap ``queue``): a scheduler
that died mid-fire leaves exactly that, and the next claimant, finding the run
already recorded, submits it again (which dispatches it if it never was) and
moves on. Several schedulers, and a scheduler killed mid-fire, thus start each
slot's run once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from orchestrator.control.messages import sign
from orchestrator.control.slots import Due, Timing, plan
from orchestrator.errors import OrchestratorError
from orchestrator.observability.metrics import SCHEDULE_RESULTS, bounded, metrics
from orchestrator.runtime.services import Services
from orchestrator.state.models import Schedule
from orchestrator.state.schedules import ScheduleStore
from orchestrator.state.states import Overlap, RunState

log = logging.getLogger(__name__)

Submit = Callable[[dict[str, Any]], str | None]
FIRE_LIMIT = 100  # slots one evaluation fires per schedule at most (catch-up "all" goes on next time)
ACTIVE = (RunState.QUEUED, RunState.RUNNING, RunState.RECOVERING)


def slot_run_id(schedule: str, slot: datetime) -> str:
    return f"{schedule}-{slot:%Y%m%dT%H%M%SZ}"


def slot_key(schedule: str, slot: datetime) -> str:
    return f"schedule:{schedule}:{slot:%Y-%m-%dT%H:%M:%SZ}"


@dataclass
class _Cursor:
    """What one evaluation knows of its schedule while it moves it along."""

    row: Schedule
    timing: Timing
    at: datetime | None
    last_run_id: str | None
    queued: datetime | None


class ScheduleRunner:
    """Evaluates the due schedules for one scheduler (``owner`` names it in the claims)."""

    def __init__(self, services: Services, submit: Submit, owner: str) -> None:
        self.services = services
        self.settings = services.settings
        self.submit = submit
        self.owner = owner
        self.store = ScheduleStore(services.repository.sessions)
        self._started = time.monotonic()
        self._now = datetime.min

    @property
    def claim_seconds(self) -> float:
        """How long a claim lasts unrenewed: a scheduler that died holding one delays its
        schedule this long at most."""
        return max(3 * self.settings.lease_ttl, 2.0)

    def clock(self) -> datetime:
        """The evaluation's time now: the Redis time it started at, plus the time elapsed since
        (for claims and lag; which slots are due is decided at the tick's time)."""
        return self._now + timedelta(seconds=time.monotonic() - self._started)

    def _until(self) -> datetime:
        return self.clock() + timedelta(seconds=self.claim_seconds)

    def tick(self, now: datetime) -> None:
        """Evaluate every due schedule at ``now`` (the Redis server's time).

        Every schedule's on-time slots fire first; late slots (catch-up) only then, so a
        schedule catching up on its downtime does not make another's on-time slot late.
        """
        self._now, self._started = now, time.monotonic()
        behind = [name for name in self.store.due(now) if self._evaluate(name, catch_up=False)]
        for name in behind:
            self._evaluate(name, catch_up=True)

    def _evaluate(self, name: str, *, catch_up: bool) -> bool:
        try:
            return self.evaluate(name, catch_up=catch_up)
        except OrchestratorError as exc:
            log.error("schedule %s not evaluated: %s", name, exc)
            return False

    def evaluate(self, name: str, *, catch_up: bool = True) -> bool:
        """Fire the schedule's due slots; without ``catch_up``, stop at its first late slot.

        True when it stopped there, with late slots left to fire.
        """
        row = self.store.claim(name, self.owner, self.clock(), self._until())
        if row is None:
            return False  # another scheduler holds it, or it was paused or removed meanwhile
        try:
            behind = self._evaluate_claimed(row, catch_up)
        except Exception:
            self.store.release(name, self.owner)
            raise
        # Not in a finally: a scheduler killed mid-fire leaves its claim to expire, and so do we.
        self.store.release(name, self.owner)
        return behind

    def _evaluate_claimed(self, row: Schedule, catch_up: bool) -> bool:
        for result in SCHEDULE_RESULTS:  # every series exists from 0, so increase() sees the first
            metrics().schedule_runs.labels(schedule=bounded("schedule", row.name), result=result)
        timing = Timing(row.cron, row.every_seconds, row.timezone)
        cursor = _Cursor(row, timing, row.next_slot_at, row.last_run_id, row.queued_slot_at)
        if cursor.queued is not None:
            self._release_queued(cursor)
        return self._advance_slots(cursor, catch_up)

    # -- the cursor's slots ------------------------------------------------------------------------

    def _advance_slots(self, cursor: _Cursor, catch_up: bool) -> bool:
        """Handle the planned slots in order; True when it stopped at a late one (no ``catch_up``)."""
        row = cursor.row
        if cursor.at is None:  # new, resumed or re-timed: it starts at its next slot from now
            self._move(cursor, cursor.timing.next_after(self._now))
            return False
        # What is due is decided at the tick's time; a slot falling due meanwhile waits for the next.
        todo = plan(
            cursor.timing, cursor.at, self._now, row.catchup, self.settings.schedule_grace, FIRE_LIMIT
        )
        if todo.missed:
            self._count(row.name, "missed", todo.missed)
            log.warning(
                "schedule %s missed %d slot(s) before %s (catch-up %s)",
                row.name,
                todo.missed,
                (todo.fire[0].at if todo.fire else todo.cursor).isoformat(),
                row.catchup.value,
            )
        for due in todo.fire:
            # Over the missed slots first: then only the slot at the cursor can have a run.
            if due.at != cursor.at and not self._move(cursor, due.at):
                return False
            if due.late and not catch_up:
                return True  # planned again from here, at the same time, once the others have fired
            if not self._handle(cursor, due):
                return False
        if cursor.at != todo.cursor:
            self._move(cursor, todo.cursor)
        return False

    def _handle(self, cursor: _Cursor, due: Due) -> bool:
        """Fire, skip or queue the slot at the cursor; False when the claim was lost."""
        row, run_id = cursor.row, slot_run_id(cursor.row.name, due.at)
        following = cursor.timing.next_after(due.at)
        if self.store.run_state(run_id) is not None:
            # Recorded by a scheduler that died before it moved on: dispatch it if it never was.
            self.submit(self._payload(row, due.at))
            return self._move(cursor, following, last_slot=due.at, last_run_id=run_id)
        if self.store.run_state(cursor.last_run_id) in ACTIVE and row.overlap is not Overlap.ALLOW:
            if row.overlap is Overlap.QUEUE and cursor.queued is None:
                self._count(row.name, "queued")
                cursor.queued = due.at
                return self._move(cursor, following, queued=due.at)
            self._count(row.name, "skipped_overlap")
            return self._move(cursor, following, last_slot=due.at)
        self._fire(row, due)
        return self._move(cursor, following, last_slot=due.at, last_run_id=run_id)

    def _move(self, cursor: _Cursor, to: datetime, **changes: Any) -> bool:
        moved = self.store.advance(cursor.row.name, self.owner, cursor.at, to, self._until(), **changes)
        if not moved:
            log.warning("schedule %s: claim lost to another scheduler; it carries on", cursor.row.name)
            return False
        cursor.at = to
        cursor.last_run_id = changes.get("last_run_id", cursor.last_run_id)
        return True

    # -- the waiting slot (overlap "queue") ------------------------------------------------------------

    def _release_queued(self, cursor: _Cursor) -> None:
        """Fire the waiting slot once the previous run has ended."""
        row, slot = cursor.row, cursor.queued
        assert slot is not None
        run_id = slot_run_id(row.name, slot)
        if self.store.run_state(run_id) is not None:
            self.submit(self._payload(row, slot))  # recorded by a scheduler that died before clearing
        elif self.store.run_state(cursor.last_run_id) in ACTIVE:
            return  # still waiting
        else:
            self._fire(row, Due(slot, late=False))
        if self.store.take_queued(row.name, self.owner, slot, self._until(), run_id):
            cursor.queued, cursor.last_run_id = None, run_id

    # -- firing ----------------------------------------------------------------------------------------

    def _fire(self, row: Schedule, due: Due) -> None:
        run_id = self.submit(self._payload(row, due.at))
        self._count(row.name, "caught_up" if due.late else "fired")
        metrics().schedule_lag.observe(max(0.0, (self.clock() - due.at).total_seconds()))
        log.info(
            "schedule %s fired its %s slot as run %s%s",
            row.name,
            due.at.isoformat(),
            slot_run_id(row.name, due.at),
            "" if run_id is not None else " (refused: see the run's error)",
        )

    def _payload(self, row: Schedule, slot: datetime) -> dict[str, Any]:
        body: dict[str, Any] = {
            "run_id": slot_run_id(row.name, slot),
            "package": row.package,
            "variables": dict(row.variables.get("values", {})),
            "secrets": dict(row.variables.get("secrets", {})),
            "idempotency_key": slot_key(row.name, slot),
        }
        if row.version is not None:
            body["version"] = row.version
        key = self.settings.submit_key
        if key is not None:
            body["signature"] = sign(body, key.get_secret_value())
        return body

    @staticmethod
    def _count(name: str, result: str, amount: int = 1) -> None:
        metrics().schedule_runs.labels(schedule=bounded("schedule", name), result=result).inc(amount)
