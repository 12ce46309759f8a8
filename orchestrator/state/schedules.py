"""Schedules in SQL, and the short claims that let exactly one scheduler fire a schedule's slots.

Every write a firing scheduler makes is a compare-and-set: it claims the
schedule (``claim_owner``, ``claim_until``) only when nobody else holds a live
claim, and it moves the cursor (``next_slot_at``) only from the value it read
and only while it is still the owner. A scheduler that dies mid-fire leaves
its claim to expire; the next owner finds the cursor where it was and fires
that slot again, which the run's idempotency key makes a no-op if the run was
already created. Times given here come from the caller's clock (the
schedulers use the Redis server's).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.errors import ScheduleInvalid
from orchestrator.state.models import Run, Schedule
from orchestrator.state.states import CatchUp, Overlap, RunState

_KEEP: Any = object()  # "leave this column as it is" in :meth:`ScheduleStore.advance`
TIMING_FIELDS = ("cron", "every_seconds", "timezone")


@dataclass(frozen=True)
class ScheduleSpec:
    """What ``schedule add`` records (``variables``: ``{"values": ..., "secrets": ...}`` as on runs)."""

    name: str
    package: str
    version: int | None = None
    cron: str | None = None
    every_seconds: int | None = None
    timezone: str = "UTC"
    variables: dict[str, Any] = field(default_factory=dict)
    catchup: CatchUp = CatchUp.LATEST
    overlap: Overlap = Overlap.SKIP


class ScheduleStore:
    """Every read and write of schedules, one short transaction each."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    # -- the commands ------------------------------------------------------------------------

    def add(self, spec: ScheduleSpec) -> Schedule:
        try:
            with self.sessions.begin() as session:
                row = Schedule(**asdict(spec))
                session.add(row)
                session.flush()
                session.expunge(row)
                return row
        except IntegrityError:
            raise ScheduleInvalid(
                f"schedule {spec.name!r} exists (change it with `schedule update`)"
            ) from None

    def update(self, name: str, **changes: Any) -> Schedule:
        """Change fields; a new timing restarts the schedule from its next slot (nothing waits)."""
        with self.sessions.begin() as session:
            row = self._locked(session, name)
            timing = any(
                key in TIMING_FIELDS and getattr(row, key) != value for key, value in changes.items()
            )
            for key, value in changes.items():
                setattr(row, key, value)
            if timing:
                row.next_slot_at, row.queued_slot_at = None, None
            session.flush()
            session.expunge(row)
            return row

    def set_paused(self, name: str, paused: bool) -> Schedule:
        """Pause or resume; a resumed schedule starts from its next slot (the paused ones never run)."""
        with self.sessions.begin() as session:
            row = self._locked(session, name)
            if row.paused != paused:
                row.paused = paused
                row.queued_slot_at = None
                if not paused:
                    row.next_slot_at = None
            session.flush()
            session.expunge(row)
            return row

    def remove(self, name: str) -> None:
        with self.sessions.begin() as session:
            session.delete(self._locked(session, name))

    def get(self, name: str) -> Schedule:
        with self.sessions() as session:
            row = session.get(Schedule, name)
            if row is None:
                raise ScheduleInvalid(f"no schedule {name!r}")
            session.expunge(row)
            return row

    def all(self) -> list[Schedule]:
        with self.sessions() as session:
            rows = list(session.execute(select(Schedule).order_by(Schedule.name)).scalars())
            session.expunge_all()
            return rows

    @staticmethod
    def _locked(session: Session, name: str) -> Schedule:
        row = session.execute(select(Schedule).where(Schedule.name == name).with_for_update()).scalar()
        if row is None:
            raise ScheduleInvalid(f"no schedule {name!r}")
        return row

    # -- firing (schedulers) -----------------------------------------------------------------------

    def due(self, now: datetime) -> list[str]:
        """Names of the unpaused, unclaimed schedules with a slot due, a slot waiting, or no cursor yet."""
        with self.sessions() as session:
            query = select(Schedule.name).where(
                Schedule.paused.is_(False),
                Schedule.next_slot_at.is_(None)
                | (Schedule.next_slot_at <= now)
                | Schedule.queued_slot_at.is_not(None),
                Schedule.claim_until.is_(None) | (Schedule.claim_until < now),
            )
            return list(session.execute(query.order_by(Schedule.name)).scalars())

    def claim(self, name: str, owner: str, now: datetime, until: datetime) -> Schedule | None:
        """Take the schedule until ``until`` unless another live claim holds it; the row, or None."""
        with self.sessions.begin() as session:
            taken = _run(
                session,
                update(Schedule)
                .where(
                    Schedule.name == name,
                    Schedule.paused.is_(False),
                    Schedule.claim_until.is_(None)
                    | (Schedule.claim_until < now)
                    | (Schedule.claim_owner == owner),
                )
                .values(claim_owner=owner, claim_until=until)
                .execution_options(synchronize_session=False),
            )
            if taken.rowcount != 1:
                return None
            row = session.get(Schedule, name)
            assert row is not None
            session.expunge(row)
            return row

    def advance(
        self,
        name: str,
        owner: str,
        expected: datetime | None,
        cursor: datetime,
        until: datetime,
        *,
        last_slot: datetime | None = _KEEP,
        last_run_id: str | None = _KEEP,
        queued: datetime | None = _KEEP,
    ) -> bool:
        """Move the cursor from ``expected`` to ``cursor`` (and renew the claim) if still the owner."""
        values: dict[str, Any] = {"next_slot_at": cursor, "claim_until": until}
        values.update(
            {
                key: value
                for key, value in (
                    ("last_slot_at", last_slot),
                    ("last_run_id", last_run_id),
                    ("queued_slot_at", queued),
                )
                if value is not _KEEP
            }
        )
        at = Schedule.next_slot_at.is_(None) if expected is None else Schedule.next_slot_at == expected
        return self._owned_update(name, owner, at, values)

    def take_queued(
        self, name: str, owner: str, slot: datetime, until: datetime, last_run_id: str | None
    ) -> bool:
        """The waiting slot ``slot`` was handled: clear it (and renew the claim) if still the owner."""
        values = {
            "queued_slot_at": None,
            "claim_until": until,
            "last_slot_at": slot,
            "last_run_id": last_run_id,
        }
        return self._owned_update(name, owner, Schedule.queued_slot_at == slot, values)

    def release(self, name: str, owner: str) -> None:
        with self.sessions.begin() as session:
            session.execute(
                update(Schedule)
                .where(Schedule.name == name, Schedule.claim_owner == owner)
                .values(claim_owner=None, claim_until=None)
                .execution_options(synchronize_session=False)
            )

    def _owned_update(self, name: str, owner: str, condition: Any, values: dict[str, Any]) -> bool:
        with self.sessions.begin() as session:
            changed = _run(
                session,
                update(Schedule)
                .where(Schedule.name == name, Schedule.claim_owner == owner, condition)
                .values(**values)
                .execution_options(synchronize_session=False),
            )
            return changed.rowcount == 1

    def run_state(self, run_id: str | None) -> RunState | None:
        """The state of a run, or None when there is no such run (never fired, or purged)."""
        if run_id is None:
            return None
        with self.sessions() as session:
            return session.execute(select(Run.state).where(Run.id == run_id)).scalar_one_or_none()


def _run(session: Session, statement: Any) -> CursorResult[Any]:
    """Execute an UPDATE; its result tells how many rows matched."""
    return cast(CursorResult[Any], session.execute(statement))
