"""The checkpoint document and the encoding of a snapshot of it.

A snapshot (a whole checkpoint at one moment) is one JSON object::

    {"format":2,"sha256":"<hex digest of body>","body":{...}}

The body is serialised canonically (sorted keys, no whitespace) and the digest
covers exactly those bytes, so a torn write, a flipped byte or a hand edit is
detected on load without re-serialising anything. Format 2 adds the journal of
changes kept beside a snapshot (:mod:`checkpoints.journal`); a format-1 file
(the whole checkpoint rewritten at every save, by the previous version) has the
same envelope and a body without the fields format 2 added, and is read as a
snapshot with an empty journal.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from checkpoints.errors import CheckpointCorrupt, CheckpointError
from checkpoints.ids import validate_package_name, validate_run_id

FORMAT_VERSION = 2
LEGACY_FORMAT_VERSION = 1
READABLE_VERSIONS = (LEGACY_FORMAT_VERSION, FORMAT_VERSION)

JSON = Any
"""A JSON-serialisable value (pydantic cannot express the recursive type cheaply)."""


def utcnow() -> datetime:
    return datetime.now(UTC)


class TaskRecord(BaseModel):
    """A task (or an event handler) that ended: its outcome is final for this run.

    ``skipped``: it did not run and never will in this run (its precedence
    constraints could not be met, or its condition was false).
    """

    model_config = ConfigDict(extra="forbid")

    state: Literal["succeeded", "failed", "skipped"]
    output: JSON = None
    error: str | None = None
    finished_at: datetime = Field(default_factory=utcnow)


class Checkpoint(BaseModel):
    """Everything a later attempt needs to carry a run on where the last one stopped.

    ``items`` maps a foreach task to its finished items (item key to output);
    ``progress`` maps a progress key (``task`` or ``task:item``) to the value the
    task last passed to ``ctx.progress.save``; ``secrets`` holds sensitive
    variables encrypted (never in clear text; absent when no key is configured);
    ``writers`` maps a variable to the unit (``task`` or ``task[item]``) that last
    wrote it, so that a resumed run still finds two concurrent units writing it.
    ``events`` maps an event handler job (``on_error:<unit>``, ``on_success``,
    ``on_finish``) to the event it was given, recorded before its handlers run;
    ``handlers`` maps ``<job>:<handler id>`` to the handler's record: a resumed
    run runs the handlers of every recorded event that have no record yet.
    """

    model_config = ConfigDict(extra="forbid")

    format_version: int = FORMAT_VERSION
    package: str
    definition_hash: str
    run_id: str
    epoch: int = Field(ge=0)
    attempt: int = Field(default=1, ge=0)
    tasks: dict[str, TaskRecord] = Field(default_factory=dict)
    items: dict[str, dict[str, JSON]] = Field(default_factory=dict)
    variables: dict[str, JSON] = Field(default_factory=dict)
    secrets: dict[str, str] = Field(default_factory=dict)
    progress: dict[str, JSON] = Field(default_factory=dict)
    writers: dict[str, str] = Field(default_factory=dict)
    events: dict[str, dict[str, JSON]] = Field(default_factory=dict)
    handlers: dict[str, TaskRecord] = Field(default_factory=dict)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)

    def check_identifiers(self) -> None:
        """Raise :class:`~checkpoints.errors.InvalidIdentifier` unless both ids are path-safe."""
        validate_package_name(self.package)
        validate_run_id(self.run_id)


_HEADER = re.compile(rb'\{"format":(\d+),"sha256":"([0-9a-f]{64})","body":')
_TRAILER = b"}\n"


def canonical_json(value: JSON) -> bytes:
    """Serialise ``value`` deterministically (sorted keys, compact, UTF-8)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def encode(checkpoint: Checkpoint) -> bytes:
    """Return the file bytes for ``checkpoint`` (header, canonical body, trailer).

    Raise :class:`CheckpointError` when a value in it cannot be stored as JSON,
    so callers handle it like any other failed checkpoint write.
    """
    try:
        document = checkpoint.model_dump(mode="json")
        document["format_version"] = FORMAT_VERSION  # a format-1 checkpoint is rewritten as format 2
        body = canonical_json(document)
    except (TypeError, ValueError) as exc:  # PydanticSerializationError, UnicodeEncodeError
        raise CheckpointError(
            f"checkpoint of run {checkpoint.run_id!r} cannot be encoded: a task output, item, "
            f"variable or progress value is not JSON-serialisable ({exc})"
        ) from exc
    digest = hashlib.sha256(body).hexdigest()
    header = b'{"format":%d,"sha256":"%s","body":' % (FORMAT_VERSION, digest.encode())
    return header + body + _TRAILER


def verify(data: bytes) -> bool:
    """True if ``data`` has a checkpoint header and its body matches the checksum."""
    header = _HEADER.match(data)
    if header is None or not data.endswith(_TRAILER):
        return False
    body = data[header.end() : -len(_TRAILER)]
    return hashlib.sha256(body).hexdigest() == header.group(2).decode()


def decode(data: bytes, *, source: str = "checkpoint") -> Checkpoint:
    """Parse and verify file bytes; raise :class:`CheckpointCorrupt` on any damage."""
    header = _HEADER.match(data)
    if header is None or not data.endswith(_TRAILER):
        raise CheckpointCorrupt(f"{source}: not a checkpoint file (truncated or malformed)")
    if int(header.group(1)) not in READABLE_VERSIONS:
        raise CheckpointCorrupt(
            f"{source}: format version {int(header.group(1))} is not supported "
            f"(this version reads {FORMAT_VERSION}, and {LEGACY_FORMAT_VERSION} "
            "left by the previous version)"
        )
    body = data[header.end() : -len(_TRAILER)]
    if hashlib.sha256(body).hexdigest() != header.group(2).decode():
        raise CheckpointCorrupt(f"{source}: checksum mismatch (the file was damaged or edited)")
    try:
        return Checkpoint.model_validate_json(body)
    except ValidationError as exc:
        raise CheckpointCorrupt(f"{source}: body does not match the checkpoint schema: {exc}") from exc
