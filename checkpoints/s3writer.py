"""The writer of one run's S3 checkpoint for one epoch: one conditional PUT per append.

See :mod:`checkpoints.s3` for the protocol: an append creates the writer's next journal batch
with ``If-None-Match: *``; a name taken already means the journal was sealed (a fence, a newer
writer, a delete), and the re-read manifest tells which. A compaction is a manifest swap from
the ETag this writer last wrote.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Protocol

from checkpoints.errors import CheckpointError, Fenced
from checkpoints.format import Checkpoint
from checkpoints.journal import Change
from checkpoints.s3layout import Manifest, ManifestGeneration, journal_key
from checkpoints.writer import JournalWriter


class RunStore(Protocol):
    """What the writer needs of :class:`~checkpoints.s3.S3CheckpointStore` (which imports this module)."""

    bucket: str
    max_bytes: int

    def encoded(self, checkpoint: Checkpoint) -> bytes: ...

    def _try_create(self, key: str, data: bytes) -> bool: ...

    def _manifest(self, run: str) -> Manifest: ...

    def _new_generation(
        self,
        run: str,
        manifest: Manifest,
        data: bytes,
        *,
        epoch: int,
        closing: ManifestGeneration | None = None,
    ) -> tuple[ManifestGeneration, Manifest | None]: ...


class S3CheckpointWriter(JournalWriter):
    """:class:`~checkpoints.store.CheckpointWriter` appending journal batches, one object each."""

    def __init__(
        self,
        store: RunStore,
        run: str,
        run_id: str,
        epoch: int,
        generation: ManifestGeneration,
        manifest: Manifest,
        snapshot_bytes: int,
    ) -> None:
        super().__init__(store, run_id, epoch, snapshot_bytes)
        self._store, self._run, self._generation, self._manifest = store, run, generation, manifest
        self._batches = 0
        self._failed: str | None = None

    def __repr__(self) -> str:
        return f"S3CheckpointWriter('s3://{self._store.bucket}/{self._run}', epoch={self._epoch})"

    @property
    def generation(self) -> int:
        return self._generation.number

    def append(self, changes: Sequence[Change]) -> int:
        if not changes:
            return 0
        self._check_usable()
        data = self._records(changes)
        key = journal_key(self._run, self._generation, self._batches + 1)
        with self._failing("an earlier append failed"):
            # The one request of an append: taken already means sealed (or, were the batch
            # this writer's own retried create, the same bytes, which counts as written).
            if not self._store._try_create(key, data):
                raise self._refusal()
        self._batches += 1
        self._appended(len(changes), len(data))
        return len(data)

    def compact(self, checkpoint: Checkpoint) -> int:
        self._check_compaction(checkpoint)
        self._check_usable()
        data = self._store.encoded(checkpoint)
        with self._failing("an earlier compaction failed"):
            closing = replace(self._generation, batches=self._batches)
            new, written = self._store._new_generation(
                self._run, self._manifest, data, epoch=self._epoch, closing=closing
            )
            if written is None:
                raise self._refusal()
        self._generation, self._manifest, self._batches = new, written, 0
        self._compacted(len(data))
        return len(data)

    def close(self) -> None:
        """Nothing to release: every request stands alone."""

    def _refusal(self) -> CheckpointError:
        """Why this writer's journal was sealed or its manifest changed: a newer epoch
        (fenced), a delete, or another writer of its epoch."""
        current = self._store._manifest(self._run)
        if current.epoch > self._epoch:
            return Fenced(self._run_id, self._epoch, current.epoch)
        if current.etag is None or not current.generations:
            return CheckpointError(
                f"checkpoint of run {self._run_id!r} was deleted while its writer was open"
            )
        newest = max(g.number for g in current.generations)
        began = f"began generation {newest}" if newest > self._generation.number else "changed the manifest"
        return CheckpointError(
            f"checkpoint of run {self._run_id!r}: another writer of epoch {self._epoch} {began}; "
            "this writer must stop"
        )

    def _check_usable(self) -> None:
        if self._failed is not None:
            raise CheckpointError(f"checkpoint of run {self._run_id!r} cannot be written: {self._failed}")

    @contextlib.contextmanager
    def _failing(self, why: str) -> Iterator[None]:
        """Mark the writer unusable when the block raises anything but :class:`Fenced`."""
        try:
            yield
        except Fenced:
            raise
        except BaseException as exc:
            self._failed = f"{why} ({exc})"
            raise
