"""An in-memory checkpoint store: the stub for unit tests and single-process use.

It keeps the encoded bytes (snapshots and journals), not the objects, so that
every load goes through the same checksums, replay and fallback as the
filesystem store (:func:`~checkpoints.generations.read_generations`).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial

from checkpoints.errors import CheckpointError, CheckpointMismatch, CheckpointTooLarge, Fenced
from checkpoints.format import Checkpoint, encode, verify
from checkpoints.generations import Generation, read_generations
from checkpoints.ids import validate_package_name, validate_run_id
from checkpoints.journal import Change
from checkpoints.writer import JournalWriter

DEFAULT_MAX_BYTES = 64 * 1024 * 1024


@dataclass
class _Run:
    epoch: int = 0
    generations: dict[int, tuple[bytes, bytearray]] = field(default_factory=dict)


class InMemoryCheckpointStore:
    """Thread-safe :class:`~checkpoints.store.CheckpointStore` held in a dict."""

    def __init__(self, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._runs: dict[tuple[str, str], _Run] = {}
        self.writes = 0

    @staticmethod
    def _key(package: str, run_id: str) -> tuple[str, str]:
        return validate_package_name(package), validate_run_id(run_id)

    def check(self) -> None:
        """Always usable: the dict is this process's."""

    def load(self, package: str, run_id: str, *, definition_hash: str | None = None) -> Checkpoint | None:
        key = self._key(package, run_id)
        with self._lock:
            run = self._runs.get(key)
            parts = {n: (s, bytes(j)) for n, (s, j) in run.generations.items()} if run else {}
        where = f"memory:{package}/{run_id}"
        generations = [
            Generation(
                n, partial(bytes, s), partial(bytes, j), f"{where}/snapshot-{n}", f"{where}/journal-{n}"
            )
            for n, (s, j) in parts.items()
        ]
        checkpoint = read_generations(generations, package=package, run_id=run_id, where=where)
        stale = checkpoint is not None and checkpoint.definition_hash != definition_hash
        if checkpoint is not None and definition_hash is not None and stale:
            raise CheckpointMismatch(package, checkpoint.definition_hash, definition_hash)
        return checkpoint

    def open(self, checkpoint: Checkpoint) -> InMemoryCheckpointWriter:
        key = self._key(checkpoint.package, checkpoint.run_id)
        data = self.encoded(checkpoint)
        with self._lock:
            run = self._runs.setdefault(key, _Run())
            self._check_epoch(run, key, checkpoint.epoch)
            run.epoch = checkpoint.epoch
            generation = self._new_generation(run, data)
        return InMemoryCheckpointWriter(self, key, checkpoint.epoch, generation, len(data))

    def save(self, checkpoint: Checkpoint) -> int:
        writer = self.open(checkpoint)
        writer.close()
        return writer.snapshot_bytes

    def delete(self, package: str, run_id: str, *, epoch: int) -> None:
        key = self._key(package, run_id)
        with self._lock:
            run = self._runs.get(key)
            if run is not None:
                self._check_epoch(run, key, epoch)
                run.generations.clear()

    def purge(self, package: str, run_id: str) -> bool:
        """Forget the run, its epoch included (finished runs only, see the protocol)."""
        key = self._key(package, run_id)
        with self._lock:
            return self._runs.pop(key, None) is not None

    def fence(self, package: str, run_id: str, epoch: int) -> int:
        key = self._key(package, run_id)
        with self._lock:
            run = self._runs.setdefault(key, _Run())
            run.epoch = max(run.epoch, epoch)
            return run.epoch

    def next_epoch(self, package: str, run_id: str) -> int:
        key = self._key(package, run_id)
        with self._lock:
            run = self._runs.setdefault(key, _Run())
            run.epoch += 1
            return run.epoch

    def epoch(self, package: str, run_id: str) -> int:
        key = self._key(package, run_id)
        with self._lock:
            run = self._runs.get(key)
            return 0 if run is None else run.epoch

    # -- for the writer ----------------------------------------------------------------

    def encoded(self, checkpoint: Checkpoint) -> bytes:
        data = encode(checkpoint)
        if len(data) > self.max_bytes:
            raise CheckpointTooLarge(
                f"checkpoint of run {checkpoint.run_id!r} is {len(data)} bytes, "
                f"over the limit of {self.max_bytes}"
            )
        return data

    def _new_generation(self, run: _Run, data: bytes) -> int:
        """Add a generation; keep it and the newest intact one before it (the caller holds the lock)."""
        numbers = sorted(run.generations, reverse=True)
        new = (numbers[0] if numbers else 0) + 1
        run.generations[new] = (data, bytearray())
        keep = next((n for n in numbers if verify(run.generations[n][0])), new)
        for number in [n for n in run.generations if n < keep]:
            del run.generations[number]
        self.writes += 1
        return new

    def _append(self, key: tuple[str, str], epoch: int, generation: int, data: bytes) -> None:
        with self._lock:
            run = self._runs[key]
            self._check_epoch(run, key, epoch)
            if generation + 1 in run.generations:
                raise CheckpointError(f"checkpoint of run {key[1]!r}: a newer generation was begun")
            if generation not in run.generations:
                raise CheckpointError(f"checkpoint of run {key[1]!r} was deleted while its writer was open")
            run.generations[generation][1].extend(data)
            self.writes += 1

    def _compact(self, key: tuple[str, str], epoch: int, generation: int, data: bytes) -> int:
        with self._lock:
            run = self._runs[key]
            self._check_epoch(run, key, epoch)
            if generation + 1 in run.generations:
                raise CheckpointError(f"checkpoint of run {key[1]!r}: a newer generation was begun")
            return self._new_generation(run, data)

    @staticmethod
    def _check_epoch(run: _Run, key: tuple[str, str], epoch: int) -> None:
        if epoch < run.epoch:
            raise Fenced(key[1], epoch, run.epoch)


class InMemoryCheckpointWriter(JournalWriter):
    """:class:`~checkpoints.store.CheckpointWriter` of :class:`InMemoryCheckpointStore`."""

    def __init__(
        self, store: InMemoryCheckpointStore, key: tuple[str, str], epoch: int, generation: int, size: int
    ) -> None:
        super().__init__(store, key[1], epoch, size)
        self._store, self._key, self._generation = store, key, generation

    @property
    def generation(self) -> int:
        return self._generation

    def append(self, changes: Sequence[Change]) -> int:
        if not changes:
            return 0
        data = self._records(changes)
        self._store._append(self._key, self._epoch, self._generation, data)
        self._appended(len(changes), len(data))
        return len(data)

    def compact(self, checkpoint: Checkpoint) -> int:
        self._check_compaction(checkpoint)
        data = self._store.encoded(checkpoint)
        self._generation = self._store._compact(self._key, self._epoch, self._generation, data)
        self._compacted(len(data))
        return len(data)

    def close(self) -> None:
        """Nothing to release."""
