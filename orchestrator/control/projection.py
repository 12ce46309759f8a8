"""The schedulers' side of the event stream: write what workers appended to SQL, in batches.

Every scheduler tick calls :meth:`Projector.run`, which writes batches of at
most ``batch`` entries, each in one SQL transaction
(:class:`~orchestrator.state.projection.Projections`), until the stream is
drained or ``max_batches`` were written. What SQL holds is then trimmed from
the stream. While SQL is down nothing is committed and nothing is trimmed:
the entries wait in Redis. Several schedulers take turns (one batch at a
time), so nothing is written twice; a scheduler that dies mid-batch leaves
an uncommitted transaction, and the next batch reads the same entries again.

The lag (``orchestrator_event_lag_seconds``) is how old, on the Redis
clock, the oldest event not yet in SQL is, or was when its batch committed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from orchestrator.control.stream import EventStream, parse_id
from orchestrator.observability.metrics import gauges
from orchestrator.state.projection import Batch, Entry, Projections
from orchestrator.state.records import Record, decode_entry

log = logging.getLogger(__name__)

BATCH = 500
MAX_BATCHES = 20


@dataclass(frozen=True)
class Projected:
    """One :meth:`Projector.run`: entries consumed, records written, the lag after it (seconds)."""

    entries: int
    written: int
    batches: int
    lag: float
    skipped: bool  # another scheduler held the projection


class Projector:
    """Writes the event stream to SQL (see the module docstring)."""

    def __init__(
        self,
        stream: EventStream,
        projections: Projections,
        server_ms: Callable[[], int] | None = None,
        *,
        batch: int = BATCH,
        max_batches: int = MAX_BATCHES,
    ) -> None:
        self.stream = stream
        self.projections = projections
        self.batch = batch
        self.max_batches = max_batches
        self._server_ms = server_ms

    def run(self, max_batches: int | None = None) -> Projected:
        """Write batches until the stream is drained (or ``max_batches``); set the lag gauge."""
        newest, mirrored = self.stream.head()
        if newest is None or parse_id(newest) <= parse_id(mirrored):
            return self._done(Projected(0, 0, 0, 0.0, False))
        entries = written = batches = 0
        last: Batch | None = None
        for _ in range(max_batches or self.max_batches):
            batch = self.projections.project(self._read)
            if batch is None:  # another scheduler is writing: its gauge says the lag
                return self._done(Projected(entries, written, batches, self._pending_age(mirrored), True))
            if batch.entries == 0:
                break
            last, batches = batch, batches + 1
            entries, written = entries + batch.entries, written + batch.written
            self.stream.projected(batch.position)
            if batch.entries < self.batch:
                break
        lag = self._lag(last)
        return self._done(Projected(entries, written, batches, lag, False))

    def _read(self, position: str) -> list[Entry]:
        """The records of the entries after ``position``: whole entries, about ``batch`` records."""
        found: list[Entry] = []
        for entry_id, raw in self.stream.read_after(position, self.batch):
            found.extend((entry_id, record) for record in _decode(entry_id, raw))
            if len(found) >= self.batch:
                break
        return found

    def _now_ms(self) -> int:
        if self._server_ms is not None:
            return self._server_ms()
        return int(time.time() * 1000)

    def _lag(self, last: Batch | None) -> float:
        """Age of the oldest entry still waiting, else of the last batch's first entry at its commit."""
        if last is None:
            return 0.0
        waiting = self.stream.first_after(last.position)
        oldest = waiting or last.first
        if oldest is None:
            return 0.0
        return max(0, self._now_ms() - parse_id(oldest)[0]) / 1000

    def _pending_age(self, position: str) -> float:
        waiting = self.stream.first_after(position)
        return 0.0 if waiting is None else max(0, self._now_ms() - parse_id(waiting)[0]) / 1000

    @staticmethod
    def _done(result: Projected) -> Projected:
        gauges().event_lag.set(result.lag)
        return result


def _decode(entry_id: str, raw: bytes) -> list[Record | None]:
    records = decode_entry(raw)
    if None in records:
        # Written by something that is not a worker of this version: it cannot be projected, and
        # keeping it would stop every later event. Logged, with the id, and skipped.
        log.error(
            "event stream entry %s holds %d of %d items that are not records: skipped",
            entry_id,
            records.count(None),
            len(records),
        )
    return records
