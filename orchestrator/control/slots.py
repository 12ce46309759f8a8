"""When a schedule fires: its slots (cron in a time zone, or a fixed interval), durations, catch-up.

A *slot* is an instant, a timezone-aware UTC ``datetime`` in whole seconds.

``--cron``: a five-field cron expression read in the schedule's time zone
(zoneinfo names, ``UTC`` by default), evaluated by cronsim with Debian cron's
daylight-saving rules: a time that does not exist on the night the clocks go
forward fires at the first instant after the gap (``30 2 * * *`` fires at
03:00 in Europe/Berlin that night); a time that happens twice on the night the
clocks go back fires once, at its first occurrence. Expressions whose minute or
hour is a wildcard (``*/15 * * * *``) follow elapsed time: they fire in both
passes of a repeated hour.

``--every``: a fixed interval in seconds of elapsed time, its slots at the
multiples of the interval since 1970-01-01 UTC (``--every 15m`` fires at
:00, :15, :30, :45); no time zone applies.

:func:`plan` decides, for a scheduler evaluating a schedule at ``now``, which
due slots fire and which were missed, by the schedule's catch-up policy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from orchestrator.errors import ScheduleInvalid
from orchestrator.state.states import CatchUp

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"(\d+)\s*([smhdw])")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_STEPS = 8  # cronsim results to look through for the next slot (DST repeats give at most one stale one)
COUNT_CAP = 10_000  # missed slots counted one by one at most per evaluation (cron; intervals are exact)


def parse_duration(text: str) -> int:
    """Seconds in ``90``, ``90s``, ``15m``, ``1h30m``, ``2d``, ``1w``; :class:`ScheduleInvalid` otherwise."""
    cleaned = text.strip().lower()
    if cleaned.isdigit():
        seconds = int(cleaned)
    else:
        parts = _DURATION.findall(cleaned)
        if not parts or _DURATION.sub("", cleaned).strip():
            raise ScheduleInvalid(f"duration {text!r}: expected e.g. 30s, 15m, 1h30m, 2d (or seconds)")
        seconds = sum(int(number) * _UNITS[unit] for number, unit in parts)
    if seconds <= 0:
        raise ScheduleInvalid(f"duration {text!r} must be positive")
    return seconds


def format_duration(seconds: int) -> str:
    """The shortest ``1h30m`` form of a positive number of seconds."""
    parts = []
    for unit, size in sorted(_UNITS.items(), key=lambda item: -item[1]):
        if unit != "w" and seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(parts) or "0s"


def whole_seconds(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(microsecond=0)


@dataclass(frozen=True)
class Timing:
    """A schedule's slots: ``cron`` in ``timezone``, or every ``every`` seconds."""

    cron: str | None = None
    every: int | None = None
    timezone: str = "UTC"

    def __post_init__(self) -> None:
        if (self.cron is None) == (self.every is None):
            raise ScheduleInvalid("give exactly one of --cron and --every")
        if self.every is not None:
            if self.every <= 0:
                raise ScheduleInvalid("--every must be a positive duration")
            if self.timezone != "UTC":
                raise ScheduleInvalid("--timezone applies to --cron only: --every counts elapsed time")
            return
        assert self.cron is not None
        if len(self.cron.split()) != 5:
            raise ScheduleInvalid(f"cron {self.cron!r}: expected five fields (minute hour day month weekday)")
        try:
            CronSim(self.cron, datetime.now(self.zone))
        except CronSimError as exc:
            raise ScheduleInvalid(f"cron {self.cron!r}: {exc}") from None

    @property
    def zone(self) -> ZoneInfo:
        try:
            return ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ScheduleInvalid(f"unknown time zone {self.timezone!r} (e.g. Europe/Berlin, UTC)") from None

    def describe(self) -> str:
        if self.every is not None:
            return f"every {format_duration(self.every)}"
        return f"cron {self.cron!r} ({self.timezone})"

    def next_after(self, at: datetime) -> datetime:
        """The first slot strictly after ``at``."""
        if self.every is not None:
            elapsed = (at - _EPOCH) // timedelta(seconds=self.every)
            return _EPOCH + timedelta(seconds=self.every * (elapsed + 1))
        assert self.cron is not None
        found = CronSim(self.cron, at.astimezone(self.zone))
        for _ in range(_STEPS):
            # cronsim reads a repeated wall-clock hour as its first pass: a result may lie behind.
            slot = next(found).astimezone(UTC)
            if slot > at:
                return slot
        raise ScheduleInvalid(f"cron {self.cron!r}: no slot after {at.isoformat()}")  # pragma: no cover

    def at_or_after(self, at: datetime) -> datetime:
        """The first slot at ``at`` or after it."""
        return self.next_after(at - timedelta(microseconds=1))

    def count(self, start: datetime, end: datetime, cap: int = COUNT_CAP) -> int:
        """How many slots lie in ``[start, end)``, where ``start`` is a slot (at most ``cap`` for cron)."""
        if start >= end:
            return 0
        if self.every is not None:
            return (end - timedelta(microseconds=1) - start) // timedelta(seconds=self.every) + 1
        counted, slot = 0, start
        while slot < end and counted < cap:
            counted, slot = counted + 1, self.next_after(slot)
        return counted

    def last_before(self, start: datetime, end: datetime) -> datetime:
        """The last slot in ``[start, end)``, where ``start`` is a slot before ``end``."""
        if self.every is not None:
            return start + timedelta(seconds=self.every * (self.count(start, end) - 1))
        slot = start
        while (following := self.next_after(slot)) < end:
            slot = following
        return slot


@dataclass(frozen=True)
class Due:
    """A slot to fire; ``late`` when a scheduler reaches it more than the grace period after it."""

    at: datetime
    late: bool


@dataclass(frozen=True)
class Plan:
    """What an evaluation does: fire ``fire`` (in order), count ``missed`` slots, then move the
    schedule's cursor to ``cursor`` (the first slot not handled)."""

    fire: list[Due]
    missed: int
    cursor: datetime


def plan(timing: Timing, cursor: datetime, now: datetime, catchup: CatchUp, grace: float, limit: int) -> Plan:
    """The due slots of ``[cursor, now]`` under ``catchup``; at most ``limit`` fire per evaluation.

    A slot is on time while ``now`` is at most ``grace`` seconds past it, and on-time slots
    always fire. Late ones (missed: no scheduler evaluated the schedule in time) fire all
    (``all``), only the most recent of them and only if nothing is on time (``latest``), or
    never (``none``).
    """
    if cursor > now:
        return Plan([], 0, cursor)
    on_time_from = now - timedelta(seconds=grace)
    if catchup is CatchUp.ALL:
        fire, following = _consecutive(timing, cursor, now, limit, late_before=on_time_from)
        return Plan(fire, 0, following)
    first_on_time = max(cursor, timing.at_or_after(on_time_from))
    missed = timing.count(cursor, first_on_time)
    fire, following = _consecutive(timing, first_on_time, now, limit, late_before=on_time_from)
    if not fire and missed and catchup is CatchUp.LATEST:
        fire, missed = [Due(timing.last_before(cursor, first_on_time), late=True)], missed - 1
    return Plan(fire, missed, following)


def _consecutive(
    timing: Timing, start: datetime, now: datetime, limit: int, *, late_before: datetime
) -> tuple[list[Due], datetime]:
    """The slots from ``start`` (a slot) up to ``now``, at most ``limit``, and the slot after them."""
    fire: list[Due] = []
    slot = start
    while slot <= now and len(fire) < limit:
        fire.append(Due(slot, late=slot < late_before))
        slot = timing.next_after(slot)
    return fire, slot
