"""Records: what a worker reports about an attempt, on their way through the event stream to SQL.

A worker never writes SQL while its tasks run. Each thing it reports (a task
started or finished, a foreach item done, a checkpoint saved, a resume) is a
:class:`Record`, appended to a Redis stream by a script that checks the
attempt's epoch first (:mod:`orchestrator.control.stream`), and written to SQL
later, in batches, by the schedulers (:mod:`orchestrator.state.projection`).

A record is one JSON object; a stream entry holds one record or a JSON array
of the records one append carried (:func:`decode_entry`), so the stream can
carry other kinds of record without a change of format: ``type`` names the handler
that writes it to SQL. Three exist: ``event`` (a timeline entry, and the task
state it implies), ``task`` (a task state without a timeline entry) and
``log`` (a line a task logged, :mod:`orchestrator.state.tasklogs`). A new
kind is a new ``type`` with its own handler and table.

``source`` (``<epoch>-<sequence>``) is unique per run and per attempt, so a
record written twice (two schedulers, a batch replayed after a crash, the
attempt's outcome transaction racing the projection) is stored once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

FORMAT = 1
_JSON = json.JSONEncoder(separators=(",", ":"))
"""One encoder for every record (``json.dumps`` with options builds one per call)."""


class MalformedRecord(ValueError):
    """A stream entry that is not a record this version can read."""


@dataclass(frozen=True)
class TaskChange:
    """The state of one task that a record implies (``state`` None: fields only)."""

    task_id: str
    state: str | None = None
    tries: int | None = None
    seconds: float | None = None
    error: str | None = None
    started: bool = False
    create_only: bool = False  # a task skipped on resume: recorded succeeded if not known yet

    def encode(self) -> dict[str, Any]:
        body: dict[str, Any] = {"id": self.task_id}
        for name in ("state", "tries", "seconds", "error"):
            value = getattr(self, name)
            if value is not None:
                body[name] = value
        for flag in ("started", "create_only"):
            if getattr(self, flag):
                body[flag] = True
        return body

    @classmethod
    def decode(cls, body: dict[str, Any]) -> TaskChange:
        return cls(
            task_id=str(body["id"]),
            state=body.get("state"),
            tries=body.get("tries"),
            seconds=body.get("seconds"),
            error=body.get("error"),
            started=bool(body.get("started", False)),
            create_only=bool(body.get("create_only", False)),
        )


@dataclass(frozen=True, slots=True)
class Record:
    """One report of an attempt: an event (``kind`` and ``detail``) and/or task changes."""

    type: str
    run_id: str
    epoch: int
    attempt: int
    node: str
    seq: int
    at: float  # seconds since the epoch, on the worker's clock (for display, like every event time)
    kind: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    tasks: tuple[TaskChange, ...] = ()

    @property
    def source(self) -> str:
        return f"{self.epoch}-{self.seq}"

    @property
    def when(self) -> datetime:
        return datetime.fromtimestamp(self.at, UTC)

    def encode(self) -> str:
        body: dict[str, Any] = {
            "v": FORMAT,
            "t": self.type,
            "r": self.run_id,
            "e": self.epoch,
            "a": self.attempt,
            "n": self.node,
            "s": self.seq,
            "at": self.at,
        }
        if self.kind is not None:
            body["k"] = self.kind
        if self.detail:
            body["d"] = self.detail
        if self.tasks:
            body["tasks"] = [change.encode() for change in self.tasks]
        return _JSON.encode(body)

    @classmethod
    def decode(cls, raw: str | bytes) -> Record:
        """Parse one encoded record; raise :class:`MalformedRecord` if it is not a record."""
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise MalformedRecord(f"unreadable record: {exc}") from exc
        return cls.from_body(body)

    @classmethod
    def from_body(cls, body: Any) -> Record:
        """A record from its decoded JSON body; raise :class:`MalformedRecord` if it is not one."""
        try:
            if not isinstance(body, dict) or body.get("v") != FORMAT:
                raise MalformedRecord(f"not a format-{FORMAT} record")
            return cls(
                type=str(body["t"]),
                run_id=str(body["r"]),
                epoch=int(body["e"]),
                attempt=int(body["a"]),
                node=str(body["n"]),
                seq=int(body["s"]),
                at=float(body["at"]),
                kind=body.get("k"),
                detail=dict(body.get("d") or {}),
                tasks=tuple(TaskChange.decode(change) for change in body.get("tasks") or ()),
            )
        except MalformedRecord:
            raise
        except (ValueError, KeyError, TypeError) as exc:
            raise MalformedRecord(f"unreadable record: {exc}") from exc


def encode_entry(encoded: list[str]) -> str:
    """One stream entry holding several encoded records (a JSON array, in order)."""
    return "[" + ",".join(encoded) + "]"


def decode_entry(raw: str | bytes) -> list[Record | None]:
    """The records of one stream entry (one record, or an array of them); a record that cannot be
    read is ``None`` in its place, an entry that cannot be read at all is ``[None]``."""
    try:
        body = json.loads(raw)
    except ValueError:
        return [None]
    found: list[Record | None] = []
    for item in body if isinstance(body, list) else [body]:
        try:
            found.append(Record.from_body(item))
        except MalformedRecord:
            found.append(None)
    return found or [None]
