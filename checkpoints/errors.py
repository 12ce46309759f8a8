"""Exceptions raised by checkpoint stores.

Every error derives from :class:`CheckpointError`, so a caller can catch the
whole family at once and still tell the cases apart.
"""

from __future__ import annotations


class CheckpointError(Exception):
    """Root of every checkpoint failure."""


class InvalidIdentifier(CheckpointError, ValueError):
    """A package name or run id that may not be used as a path component."""


class CheckpointCorrupt(CheckpointError):
    """No readable generation of a checkpoint is left (torn write, flipped byte, hand edit)."""


class CheckpointNotFound(CheckpointError):
    """A checkpoint was required (usage ``always``) but none exists."""


class CheckpointMismatch(CheckpointError):
    """The checkpoint was written for another definition of the package."""

    def __init__(self, package: str, stored_hash: str, current_hash: str) -> None:
        self.package = package
        self.stored_hash = stored_hash
        self.current_hash = current_hash
        super().__init__(
            f"checkpoint of package {package!r} was written for definition {stored_hash[:16]} "
            f"but the package is now {current_hash[:16]}; the package changed since the "
            "checkpoint was saved, so it cannot be resumed (run with --restart never to start over)"
        )


class Fenced(CheckpointError):
    """A write carried an epoch older than the one the store holds: the writer was superseded."""

    def __init__(self, run_id: str, epoch: int, stored_epoch: int) -> None:
        self.run_id = run_id
        self.epoch = epoch
        self.stored_epoch = stored_epoch
        super().__init__(
            f"checkpoint write for run {run_id!r} refused: epoch {epoch} is older than the "
            f"stored epoch {stored_epoch} (this attempt was fenced by a newer one)"
        )


class CheckpointTooLarge(CheckpointError):
    """A checkpoint body exceeds the configured size limit."""


class CheckpointUnavailable(CheckpointError):
    """The store cannot be reached or refuses the request (network, credentials, bucket)."""
