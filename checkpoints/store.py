"""The checkpoint store protocol every backend implements (format 2: snapshots plus journals).

A run's checkpoint is a sequence of *generations*. Generation ``g`` is a
**snapshot** (the whole :class:`~checkpoints.format.Checkpoint`, written once,
never changed) and a **journal**: the :class:`~checkpoints.journal.Change`
records saved since, in order. A save appends one record (its cost is the
size of the change); when the journal has outgrown the snapshot
(:func:`needs_compaction`) the writer *compacts*: it writes the current state
as the snapshot of generation ``g + 1`` and appends from then on to its new,
empty journal, so the cost per save stays constant on average. The store keeps
the newest generation and the one before it (the fallback when a snapshot is
damaged, :mod:`checkpoints.generations`).

Nothing is ever rewritten in place: a snapshot is a new file or object, a
journal only grows, and what says which generation is current is either the
set of names present (a directory) or one small manifest replaced by
compare-and-swap (an object store). So the same interface fits:

* a POSIX directory (:class:`~checkpoints.filesystem.FilesystemCheckpointStore`):
  a journal is a file opened with ``O_APPEND``; an append is one ``write`` and one
  ``fsync``; writers of a run are serialised by ``flock`` on the run's directory;
* an S3-compatible object store: a snapshot is an object created with
  ``If-None-Match: *`` (``<run>/snapshot-<g>-<token>.json``); an append is **one
  request**, a new object per record batch (``<run>/journal-<g>-<token>-<n>.log``,
  the writer's n-th, also ``If-None-Match: *``), acknowledged when that create
  succeeds. A manifest (``<run>/manifest``: the fence epoch, the current and
  previous generation, the batch count of a generation once compacted) changes
  only by compare-and-swap (``If-Match: <ETag>``): on a fence, a new generation or
  a delete, never on an append. Whoever raises the epoch (or begins a generation,
  or deletes), once its swap succeeded, *seals* the journals older writers may
  still append to: it creates their next batch name with a seal body. A batch
  created before the seal counts; a stale writer's next create fails (412), and it
  re-reads the manifest to raise :class:`~checkpoints.errors.Fenced`. Load lists an
  open generation's batches and replays them up to the first gap or the seal.

Fencing is the store's job, not only the caller's: every write names the
writer's epoch and the store refuses it (:class:`~checkpoints.errors.Fenced`,
nothing changed) when a newer epoch was already recorded for the run, under
the store's own serialisation (a lock, or the manifest's compare-and-swap and
the seal), so two racing writers cannot both win and a fenced writer can never
append once the fence returned, not even in the middle of a compaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from checkpoints.format import Checkpoint
from checkpoints.journal import Change

COMPACTION_FLOOR = 64 * 1024
"""A journal shorter than this is never compacted, however small its snapshot."""


@runtime_checkable
class CheckpointWriter(Protocol):
    """The one writer of a run for one epoch (one attempt): appends records, compacts.

    A writer is used by one attempt at a time; the attempt may call it from
    several threads, but serialises its calls (the executor's group commit).
    Every method raises ``Fenced`` (and changes nothing) once a newer epoch was
    recorded for the run, and ``CheckpointError`` or ``OSError`` when the write
    fails; after such a failure the records of the failed call may or may not
    survive, and the writer should not be used again.
    """

    @property
    def epoch(self) -> int:
        """The epoch every write of this writer carries."""
        ...

    @property
    def generation(self) -> int:
        """The generation appended to (its snapshot is the last one this writer wrote)."""
        ...

    @property
    def snapshot_bytes(self) -> int:
        """The size of the current generation's snapshot."""
        ...

    @property
    def journal_bytes(self) -> int:
        """The size of what this writer appended to the current generation's journal."""
        ...

    def append(self, changes: Sequence[Change]) -> int:
        """Append ``changes`` as records, durably and in order, before returning; return the bytes.

        Several changes in one call share one flush to storage (group commit).
        A crash in the middle leaves a prefix of them: a torn last record is
        dropped on load; every record of a call that returned survives.
        """
        ...

    def compact(self, checkpoint: Checkpoint) -> int:
        """Start a new generation with ``checkpoint`` as its snapshot; return its size.

        ``checkpoint`` must be the current state, i.e. the previous snapshot with
        every appended record applied. Atomic: a crash leaves either the old
        generation current or the new one. The generation before the old one
        is removed.
        """
        ...

    def close(self) -> None:
        """Release what the writer holds (files). Idempotent."""
        ...


@runtime_checkable
class CheckpointStore(Protocol):
    """Durable, fenced storage of one checkpoint per ``(package, run_id)``.

    Every method validates both ids before they reach a path or a key
    (:mod:`checkpoints.ids`), and refuses a snapshot or an append larger than
    the store's ``max_bytes`` (``CheckpointTooLarge``) before writing anything.
    """

    def check(self) -> None:
        """Raise ``CheckpointUnavailable``, naming the store, unless this process can use it.

        Nodes and schedulers call it at start: a directory must be one they can write, a
        bucket one they can reach and list.
        """
        ...

    def load(self, package: str, run_id: str, *, definition_hash: str | None = None) -> Checkpoint | None:
        """Return the run's checkpoint (snapshot plus journal replayed), or ``None`` when it has none.

        A damaged newest snapshot falls back to the previous generation with a
        warning; with no readable snapshot left, raise ``CheckpointCorrupt``.
        A format-1 checkpoint left by the previous version is read as a
        snapshot with an empty journal. With ``definition_hash`` given, a
        checkpoint written for another definition raises ``CheckpointMismatch``.
        """
        ...

    def open(self, checkpoint: Checkpoint) -> CheckpointWriter:
        """Begin a new generation with ``checkpoint`` as its snapshot; return its writer.

        This is an attempt's claiming write: fenced by ``checkpoint.epoch``
        (``Fenced`` when a newer epoch is recorded; a higher one is recorded
        first), atomic and durable before it returns.
        """
        ...

    def save(self, checkpoint: Checkpoint) -> int:
        """Write ``checkpoint`` whole as a new generation; return its size.

        The same as ``open(checkpoint)`` followed by ``close()``.
        """
        ...

    def delete(self, package: str, run_id: str, *, epoch: int) -> None:
        """Remove the run's checkpoint; fenced like a write. The epoch record stays."""
        ...

    def purge(self, package: str, run_id: str) -> bool:
        """Remove everything the store holds for the run, its fence (epoch record) included;
        return whether there was anything.

        Only for finished runs that nothing will write again (the retention purge): with the
        fence gone, a write of any epoch would be accepted again.
        """
        ...

    def fence(self, package: str, run_id: str, epoch: int) -> int:
        """Raise the run's recorded epoch to at least ``epoch``; return the recorded epoch.

        Writers with an older epoch are refused from then on, before the new
        attempt has written anything.
        """
        ...

    def next_epoch(self, package: str, run_id: str) -> int:
        """Atomically record and return one more than the run's recorded epoch."""
        ...

    def epoch(self, package: str, run_id: str) -> int:
        """Return the run's recorded epoch (0 when nothing was ever recorded)."""
        ...


def needs_compaction(writer: CheckpointWriter) -> bool:
    """True when the journal has outgrown its snapshot (and the floor): time to compact.

    Compacting when the journal reaches the size of the snapshot keeps the
    bytes written per save within a constant factor of the change on average,
    and the bytes read to load within twice the snapshot.
    """
    return writer.journal_bytes > max(writer.snapshot_bytes, COMPACTION_FLOOR)
