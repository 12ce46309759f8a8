"""The checkpoint store protocol every backend implements.

Fencing is the store's job, not only the caller's: every write names the
writer's epoch and the store refuses it (:class:`~checkpoints.errors.Fenced`)
when a newer epoch was already recorded for the run, under the store's own
lock, so two racing writers cannot both win.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from checkpoints.format import Checkpoint


@runtime_checkable
class CheckpointStore(Protocol):
    """Durable, fenced storage of one checkpoint per ``(package, run_id)``."""

    def load(self, package: str, run_id: str, *, definition_hash: str | None = None) -> Checkpoint | None:
        """Return the newest readable checkpoint, or ``None`` when the run has none.

        A damaged latest generation falls back to the previous one with a
        warning; with no readable generation left, raise ``CheckpointCorrupt``.
        With ``definition_hash`` given, a checkpoint written for another
        definition raises ``CheckpointMismatch``.
        """
        ...

    def save(self, checkpoint: Checkpoint) -> int:
        """Write ``checkpoint`` atomically; return the bytes written.

        Raise ``Fenced`` (and change nothing) when ``checkpoint.epoch`` is lower
        than the epoch the store holds for the run.
        """
        ...

    def delete(self, package: str, run_id: str, *, epoch: int) -> None:
        """Remove the run's checkpoint; fenced like :meth:`save`. The epoch record stays."""
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
