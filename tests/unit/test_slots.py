"""Schedule timing: durations, cron in a time zone across daylight saving, intervals, catch-up plans."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from checkpoints import FilesystemCheckpointStore, InMemoryCheckpointStore
from checkpoints.format import Checkpoint
from orchestrator.control.slots import Timing, format_duration, parse_duration, plan
from orchestrator.errors import ScheduleInvalid
from orchestrator.state.states import CatchUp

BERLIN_0230 = Timing(cron="30 2 * * *", timezone="Europe/Berlin")
T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("30s", 30), ("15m", 900), ("1h30m", 5400), ("2d", 172800), ("1w", 604800), (" 1H ", 3600)],
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "0s", "15 minutes", "1.5h", "-5m", "m", "5x"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ScheduleInvalid):
        parse_duration(text)


def test_durations_print_short() -> None:
    assert [format_duration(s) for s in (1, 60, 5400, 86400, 90061)] == [
        "1s",
        "1m",
        "1h30m",
        "1d",
        "1d1h1m1s",
    ]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "exactly one of --cron and --every"),
        ({"cron": "* * * * *", "every": 60}, "exactly one"),
        ({"cron": "0 2 * *"}, "five fields"),
        ({"cron": "0 0 2 * * *"}, "five fields"),
        ({"cron": "61 2 * * *"}, "Bad minute"),
        ({"cron": "0 2 * * *", "timezone": "Mars/Olympus"}, "unknown time zone"),
        ({"every": 60, "timezone": "Europe/Berlin"}, "--timezone applies to --cron only"),
        ({"every": 0}, "positive"),
    ],
)
def test_bad_timings_are_refused(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ScheduleInvalid, match=message):
        Timing(**fields)  # type: ignore[arg-type]


def test_intervals_are_aligned_to_the_epoch() -> None:
    every = Timing(every=900)
    assert every.next_after(datetime(2026, 1, 1, 12, 7, 30, tzinfo=UTC)) == datetime(
        2026, 1, 1, 12, 15, tzinfo=UTC
    )
    assert every.next_after(datetime(2026, 1, 1, 12, 15, tzinfo=UTC)) == datetime(
        2026, 1, 1, 12, 30, tzinfo=UTC
    )
    assert every.at_or_after(datetime(2026, 1, 1, 12, 15, tzinfo=UTC)) == datetime(
        2026, 1, 1, 12, 15, tzinfo=UTC
    )
    assert every.count(T0, T0 + timedelta(hours=1)) == 4
    assert every.last_before(T0, T0 + timedelta(hours=1)) == T0 + timedelta(minutes=45)


def nights(timing: Timing, start: datetime, count: int) -> list[datetime]:
    found, slot = [], start
    for _ in range(count):
        slot = timing.next_after(slot)
        found.append(slot)
    return found


def test_a_0230_slot_on_the_night_it_does_not_exist_fires_once_at_0300() -> None:
    """Europe/Berlin, 2026-03-29: clocks go from 02:00 CET to 03:00 CEST."""
    slots = nights(BERLIN_0230, datetime(2026, 3, 27, 12, tzinfo=UTC), 4)
    assert slots == [
        datetime(2026, 3, 28, 1, 30, tzinfo=UTC),  # 02:30 CET
        datetime(2026, 3, 29, 1, 0, tzinfo=UTC),  # 03:00 CEST, right after the gap
        datetime(2026, 3, 30, 0, 30, tzinfo=UTC),  # 02:30 CEST
        datetime(2026, 3, 31, 0, 30, tzinfo=UTC),
    ]


def test_a_0230_slot_on_the_night_it_happens_twice_fires_once() -> None:
    """Europe/Berlin, 2026-10-25: clocks go from 03:00 CEST back to 02:00 CET."""
    slots = nights(BERLIN_0230, datetime(2026, 10, 23, 12, tzinfo=UTC), 4)
    assert slots == [
        datetime(2026, 10, 24, 0, 30, tzinfo=UTC),  # 02:30 CEST
        datetime(2026, 10, 25, 0, 30, tzinfo=UTC),  # the first 02:30 (CEST) only
        datetime(2026, 10, 26, 1, 30, tzinfo=UTC),  # 02:30 CET
        datetime(2026, 10, 27, 1, 30, tzinfo=UTC),
    ]
    # Looking from inside the repeated hour (the second 02:10) the next slot is the next night's.
    inside = datetime(2026, 10, 25, 1, 10, tzinfo=UTC)
    assert BERLIN_0230.next_after(inside) == datetime(2026, 10, 26, 1, 30, tzinfo=UTC)


def test_a_wildcard_hour_follows_elapsed_time_through_the_repeated_hour() -> None:
    half_hourly = Timing(cron="*/30 * * * *", timezone="Europe/Berlin")
    slots = nights(half_hourly, datetime(2026, 10, 24, 23, 15, tzinfo=UTC), 6)
    assert slots == [datetime(2026, 10, 24, 23, 30, tzinfo=UTC) + timedelta(minutes=30 * n) for n in range(6)]


@pytest.mark.parametrize(
    ("catchup", "fired", "late", "missed"),
    [
        (CatchUp.NONE, [58, 59, 60], [], 58),
        (CatchUp.LATEST, [58, 59, 60], [], 58),
        (CatchUp.ALL, list(range(61)), list(range(58)), 0),
    ],
)
def test_the_catchup_plan(catchup: CatchUp, fired: list[int], late: list[int], missed: int) -> None:
    now = T0 + timedelta(seconds=60.5)
    todo = plan(Timing(every=1), T0, now, catchup, grace=2.6, limit=1000)
    assert [int((d.at - T0).total_seconds()) for d in todo.fire] == fired
    assert [int((d.at - T0).total_seconds()) for d in todo.fire if d.late] == late
    assert todo.missed == missed
    assert todo.cursor == T0 + timedelta(seconds=61)


def test_latest_fires_the_last_missed_slot_when_none_is_on_time() -> None:
    daily = Timing(cron="0 2 * * *")
    cursor = datetime(2026, 1, 1, 2, tzinfo=UTC)
    now = datetime(2026, 1, 5, 9, tzinfo=UTC)  # down for four days
    latest = plan(daily, cursor, now, CatchUp.LATEST, grace=60, limit=100)
    assert [(d.at, d.late) for d in latest.fire] == [(datetime(2026, 1, 5, 2, tzinfo=UTC), True)]
    assert latest.missed == 4 and latest.cursor == datetime(2026, 1, 6, 2, tzinfo=UTC)
    none = plan(daily, cursor, now, CatchUp.NONE, grace=60, limit=100)
    assert (none.fire, none.missed, none.cursor) == ([], 5, datetime(2026, 1, 6, 2, tzinfo=UTC))


def test_a_plan_fires_at_most_its_limit_and_goes_on_from_there() -> None:
    todo = plan(Timing(every=1), T0, T0 + timedelta(seconds=500), CatchUp.ALL, grace=60, limit=100)
    assert len(todo.fire) == 100 and todo.cursor == T0 + timedelta(seconds=100)
    assert plan(Timing(every=1), T0, T0 - timedelta(seconds=1), CatchUp.ALL, 60, 100).fire == []


@pytest.mark.parametrize("kind", ["memory", "filesystem"])
def test_a_store_purge_removes_the_checkpoint_and_the_fence(kind: str, tmp_path: object) -> None:
    store = InMemoryCheckpointStore() if kind == "memory" else FilesystemCheckpointStore(tmp_path)  # type: ignore[arg-type]
    store.save(Checkpoint(package="p", definition_hash="h", run_id="r1", epoch=3))
    store.fence("p", "r2", 2)
    assert store.purge("p", "r1") is True
    assert store.purge("p", "r2") is True
    assert store.purge("p", "r1") is False, "nothing left"
    assert store.load("p", "r1") is None and store.epoch("p", "r1") == 0
    if isinstance(store, FilesystemCheckpointStore):
        assert list(store.root.joinpath("p").iterdir()) == []
