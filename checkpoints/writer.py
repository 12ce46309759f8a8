"""What every store's :class:`~checkpoints.store.CheckpointWriter` shares: its epoch, the sizes
:func:`~checkpoints.store.needs_compaction` reads, and the encoding of the records it appends
(numbered from 1 in each generation, refused over the store's ``max_bytes`` before anything is
written). Each store's writer adds where the bytes go and how it is fenced."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from checkpoints.errors import CheckpointTooLarge
from checkpoints.format import Checkpoint
from checkpoints.journal import Change, encode_record


class _Limited(Protocol):
    max_bytes: int


class JournalWriter:
    """The bookkeeping of one writer of one run at one epoch (see the module docstring).

    ``store`` is read for its ``max_bytes`` at each append (the store's limit, as it is now).
    """

    def __init__(self, store: _Limited, run_id: str, epoch: int, snapshot_bytes: int) -> None:
        self._limits, self._run_id, self._epoch = store, run_id, epoch
        self._snapshot_bytes = snapshot_bytes
        self._journal_bytes = 0
        self._seq = 0

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def snapshot_bytes(self) -> int:
        return self._snapshot_bytes

    @property
    def journal_bytes(self) -> int:
        return self._journal_bytes

    def _records(self, changes: Sequence[Change]) -> bytes:
        """The journal lines of ``changes``, numbered after the last appended one."""
        first = self._seq + 1
        data = b"".join(encode_record(c, seq=first + i, epoch=self._epoch) for i, c in enumerate(changes))
        limit = self._limits.max_bytes
        if len(data) > limit:
            raise CheckpointTooLarge(
                f"checkpoint record of run {self._run_id!r} is {len(data)} bytes, over the limit of {limit}"
            )
        return data

    def _appended(self, records: int, size: int) -> None:
        """``records`` records of ``size`` bytes were appended durably."""
        self._seq += records
        self._journal_bytes += size

    def _check_compaction(self, checkpoint: Checkpoint) -> None:
        if checkpoint.epoch != self._epoch:
            raise ValueError(f"compaction at epoch {checkpoint.epoch} by the writer of epoch {self._epoch}")

    def _compacted(self, snapshot_bytes: int) -> None:
        """A new generation began with a snapshot of ``snapshot_bytes``; its journal is empty."""
        self._snapshot_bytes = snapshot_bytes
        self._journal_bytes = self._seq = 0
