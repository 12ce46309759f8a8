"""The journal: the changes made to a checkpoint since its snapshot, one record per save.

A record is one line of JSON that carries its own checksum::

    {"crc32":"89abcdef","record":{"seq":7,"epoch":3,"items":{"load":{"eu":{"rows":10}}}}}

The CRC-32 covers exactly the bytes of the ``record`` value; ``seq`` numbers the
records of one journal from 1 and ``epoch`` is the writer's. A record counts
only whole: its line ends with a newline, its checksum matches and its ``seq``
follows the one before. So a record torn by a crash in the middle of an append
(power lost before the fsync) is recognised and dropped when the journal is
read, and every record whose append returned (it was fsynced) is read back.

Applying a record (:func:`apply`) is absolute, never relative to what was there
("task t finished with this record", "variable x is now 5"), so the journals of
a damaged generation can be replayed on an older snapshot.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from checkpoints.errors import CheckpointError
from checkpoints.format import JSON, Checkpoint, TaskRecord

_PREFIX = re.compile(rb'\{"crc32":"([0-9a-f]{8})","record":')
_SUFFIX = b"}\n"


@dataclass(frozen=True)
class Change:
    """One save's worth of changes to a run's checkpoint; every part is optional.

    * ``tasks``: tasks that finished (for good: succeeded, or failed without failing
      the package); their finished items and their progress are dropped;
    * ``items``: foreach items that finished, ``{task: {item key: output}}``; their
      progress is dropped;
    * ``progress``: in-task progress, ``{task or task:item: value}``;
    * ``variables``: variables set, in clear (never a sensitive one);
    * ``secrets``: sensitive variables set, encrypted (:class:`~checkpoints.secrets.SecretBox`);
    * ``writers``: the unit that wrote each of those variables;
    * ``events``: event handler jobs and their events; ``handlers``: handlers that
      ended (their progress is dropped).
    """

    tasks: Mapping[str, TaskRecord] = field(default_factory=dict)
    items: Mapping[str, Mapping[str, JSON]] = field(default_factory=dict)
    progress: Mapping[str, JSON] = field(default_factory=dict)
    variables: Mapping[str, JSON] = field(default_factory=dict)
    secrets: Mapping[str, str] = field(default_factory=dict)
    writers: Mapping[str, str] = field(default_factory=dict)
    events: Mapping[str, Mapping[str, JSON]] = field(default_factory=dict)
    handlers: Mapping[str, TaskRecord] = field(default_factory=dict)


@dataclass(frozen=True)
class Record:
    """A change as read back from a journal, with its sequence number and writer's epoch."""

    seq: int
    epoch: int
    change: Change


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seq: int = Field(ge=1)
    epoch: int = Field(ge=0)
    tasks: dict[str, TaskRecord] = Field(default_factory=dict)
    items: dict[str, dict[str, JSON]] = Field(default_factory=dict)
    progress: dict[str, JSON] = Field(default_factory=dict)
    variables: dict[str, JSON] = Field(default_factory=dict)
    secrets: dict[str, str] = Field(default_factory=dict)
    writers: dict[str, str] = Field(default_factory=dict)
    events: dict[str, dict[str, JSON]] = Field(default_factory=dict)
    handlers: dict[str, TaskRecord] = Field(default_factory=dict)


_PARTS = ("items", "progress", "variables", "secrets", "writers", "events")


def encode_record(change: Change, *, seq: int, epoch: int) -> bytes:
    """The journal line of ``change``; :class:`CheckpointError` if a value is not JSON."""
    body: dict[str, Any] = {"seq": seq, "epoch": epoch}
    if change.tasks:
        body["tasks"] = {task: record.model_dump(mode="json") for task, record in change.tasks.items()}
    if change.handlers:
        body["handlers"] = {key: record.model_dump(mode="json") for key, record in change.handlers.items()}
    for part in _PARTS:
        value = getattr(change, part)
        if value:
            body[part] = value
    try:
        data = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    except (TypeError, ValueError) as exc:  # UnicodeEncodeError is a ValueError
        raise CheckpointError(
            f"a checkpoint record cannot be encoded: a task output, item, variable or progress "
            f"value is not JSON-serialisable ({exc})"
        ) from exc
    return b'{"crc32":"%08x","record":' % zlib.crc32(data) + data + _SUFFIX


def _parse(line: bytes) -> Record | None:
    """The record of one whole line (newline included), or None if it is not a valid one."""
    prefix = _PREFIX.match(line)
    if prefix is None or not line.endswith(_SUFFIX):
        return None
    data = line[prefix.end() : -len(_SUFFIX)]
    if zlib.crc32(data) != int(prefix.group(1), 16):
        return None
    try:
        body = _Body.model_validate_json(data)
    except ValidationError:
        return None
    change = Change(
        body.tasks,
        body.items,
        body.progress,
        body.variables,
        body.secrets,
        body.writers,
        body.events,
        body.handlers,
    )
    return Record(body.seq, body.epoch, change)


@dataclass(frozen=True)
class Journal:
    """What :func:`read_journal` found: the valid records and what follows them, if anything.

    ``valid_bytes`` is the length of the valid prefix. ``torn`` is true when the
    rest is a torn last append (expected after a crash: dropped without a
    warning); ``damage`` describes bytes that are not a torn tail (a damaged
    record with readable records after it), whose records are ignored.
    """

    records: list[Record]
    valid_bytes: int
    torn: bool = False
    damage: str | None = None


def read_journal(data: bytes, *, source: str = "journal") -> Journal:
    """Read the valid records of a journal, stopping at the first invalid one."""
    records: list[Record] = []
    position = 0
    while position < len(data):
        end = data.find(b"\n", position)
        if end < 0:
            break
        record = _parse(data[position : end + 1])
        if record is None or record.seq != len(records) + 1:
            break
        records.append(record)
        position = end + 1
    if position == len(data):
        return Journal(records, position)
    later = _readable_after(data, position)
    if not later:
        return Journal(records, position, torn=True)
    damage = (
        f"{source}: record {len(records) + 1} (at byte {position}) is damaged; "
        f"{later} readable record(s) after it are ignored"
    )
    return Journal(records, position, damage=damage)


def _readable_after(data: bytes, position: int) -> int:
    """How many whole, checksummed lines follow ``position`` (0: the rest is a torn tail)."""
    lines = data[position:].split(b"\n")[1:-1]  # skip the bad line; the last piece has no newline
    return sum(1 for line in lines if _parse(line + b"\n") is not None)


def apply(checkpoint: Checkpoint, record: Record | Change, *, epoch: int | None = None) -> None:
    """Apply one record (or a change written at ``epoch``) to ``checkpoint``, in place."""
    change = record.change if isinstance(record, Record) else record
    written_at = record.epoch if isinstance(record, Record) else epoch
    for task_id, task_record in change.tasks.items():
        checkpoint.tasks[task_id] = task_record
        checkpoint.items.pop(task_id, None)
        drop_progress(checkpoint.progress, task_id)
    for task_id, outputs in change.items.items():
        done = checkpoint.items.setdefault(task_id, {})
        for key, output in outputs.items():
            done[key] = output
            checkpoint.progress.pop(f"{task_id}:{key}", None)
    checkpoint.progress.update(change.progress)
    checkpoint.variables.update(change.variables)
    checkpoint.secrets.update(change.secrets)
    checkpoint.writers.update(change.writers)
    checkpoint.events.update({key: dict(event) for key, event in change.events.items()})
    for key, handler_record in change.handlers.items():
        checkpoint.handlers[key] = handler_record
        checkpoint.progress.pop(key, None)
    if written_at is not None and written_at > checkpoint.epoch:
        checkpoint.epoch = written_at


def drop_progress(progress: dict[str, Any], task_id: str) -> None:
    """Remove the progress of a task and of each of its items (``task`` and ``task:*``)."""
    prefix = task_id + ":"
    for key in [k for k in progress if k == task_id or k.startswith(prefix)]:
        del progress[key]
