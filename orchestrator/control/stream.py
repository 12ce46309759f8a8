"""The event stream in Redis: workers append records to it, fenced; schedulers read it into SQL.

Keys (``<p>`` is the prefix of :mod:`orchestrator.control.liveness`)::

    <p>:events      stream; one field ``r``: the records of one append, a JSON array of at
                    most ENTRY_RECORDS (or one record, as older workers wrote it;
                    :func:`orchestrator.state.records.decode_entry` reads both)
    <p>:projected   the id of the last entry known to be in SQL (a mirror, possibly behind)

An append is one script that first checks the attempt's epoch, like a lease
renewal: an attempt that was fenced appends nothing. The schedulers write
the stream to SQL in batches (:mod:`orchestrator.control.projection`), then
trim what SQL holds. An entry's id is ``<Redis server ms>-<n>``, so an
entry's age is measured on the Redis clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from orchestrator.state.records import encode_entry

ENTRY_RECORDS = 100
"""Records in one stream entry at most (a projection batch is whole entries: this bounds how far
past its size a batch may go)."""

# KEYS: epoch, stream, projected   ARGV: epoch, entry... (an entry: records, a JSON array)
# A missing epoch (Redis lost its data) counts as 0, as for a lease renewal: the newest
# attempt is the highest claimant, and the scheduler restores the epoch from SQL at once.
_APPEND = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current > tonumber(ARGV[1]) then return {0} end
local ids = {}
for i = 2, #ARGV do ids[#ids + 1] = redis.call('XADD', KEYS[2], '*', 'r', ARGV[i]) end
return {1, redis.call('GET', KEYS[3]) or '0-0', ids}
"""


@dataclass(frozen=True)
class Appended:
    """Stream ids of the appended records (records of one entry share its id), and the position
    the projection had reached."""

    ids: list[str]
    projected: str


def parse_id(entry_id: str) -> tuple[int, int]:
    """``"<ms>-<n>"`` as a pair that sorts like the stream."""
    ms, _, n = entry_id.partition("-")
    return int(ms), int(n or 0)


class EventStream:
    """The stream of one cluster (see the module docstring)."""

    def __init__(self, client: redis.Redis, *, prefix: str = "orch") -> None:
        self.client = client
        self.prefix = prefix
        self.key = f"{prefix}:events"
        self.projected_key = f"{prefix}:projected"
        self._append = client.register_script(_APPEND)

    def append(self, run_id: str, epoch: int, records: Sequence[str]) -> Appended | None:
        """Append encoded records for an attempt, in entries of at most :data:`ENTRY_RECORDS`;
        ``None`` if the attempt was fenced.

        An entry per append rather than per record: a long foreach's items are appended
        dozens at a time, and each record costs no stream entry, no argument and no id of
        its own in Redis (nor the worker's time to send and read them).
        """
        chunks = [list(records[i : i + ENTRY_RECORDS]) for i in range(0, len(records), ENTRY_RECORDS)]
        found: Any = self._append(
            [f"{self.prefix}:epoch:{run_id}", self.key, self.projected_key],
            [epoch, *(encode_entry(chunk) for chunk in chunks)],
        )
        if int(found[0]) == 0:
            return None
        ids = [_text(i) for i, chunk in zip(found[2], chunks, strict=True) for _ in chunk]
        return Appended(ids, _text(found[1]))

    def read_after(self, position: str, count: int) -> list[tuple[str, bytes]]:
        """At most ``count`` entries after ``position`` (their ids and raw records), oldest first."""
        raw: Any = self.client.xrange(self.key, min=f"({position}", max="+", count=count)
        return [(_text(entry_id), fields.get(b"r", b"")) for entry_id, fields in raw or []]

    def head(self) -> tuple[str | None, str]:
        """The id of the newest entry (``None``: empty) and the projected position, in one round trip."""
        pipe = self.client.pipeline(transaction=False)
        pipe.xrevrange(self.key, count=1)
        pipe.get(self.projected_key)
        newest, projected = pipe.execute()
        return (_text(newest[0][0]) if newest else None), (_text(projected) if projected else "0-0")

    def first_after(self, position: str) -> str | None:
        raw: Any = self.client.xrange(self.key, min=f"({position}", max="+", count=1)
        return _text(raw[0][0]) if raw else None

    def projected(self, position: str) -> None:
        """Record that SQL holds everything up to ``position`` and drop those entries."""
        ms, n = parse_id(position)
        pipe = self.client.pipeline(transaction=False)
        pipe.set(self.projected_key, position)
        pipe.xtrim(self.key, minid=f"{ms}-{n + 1}")
        pipe.execute()

    def length(self) -> int:
        return int(self.client.xlen(self.key))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
