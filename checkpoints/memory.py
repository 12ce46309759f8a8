"""An in-memory checkpoint store: the stub for unit tests and single-process use.

It keeps the encoded bytes, not the objects, so that every load goes through
the same checksum verification as the filesystem store.
"""

from __future__ import annotations

import threading

from checkpoints.errors import CheckpointMismatch, CheckpointTooLarge, Fenced
from checkpoints.format import Checkpoint, decode, encode
from checkpoints.ids import validate_package_name, validate_run_id

DEFAULT_MAX_BYTES = 64 * 1024 * 1024


class InMemoryCheckpointStore:
    """Thread-safe :class:`~checkpoints.store.CheckpointStore` held in a dict."""

    def __init__(self, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._files: dict[tuple[str, str], bytes] = {}
        self._epochs: dict[tuple[str, str], int] = {}
        self.writes = 0

    @staticmethod
    def _key(package: str, run_id: str) -> tuple[str, str]:
        return validate_package_name(package), validate_run_id(run_id)

    def load(self, package: str, run_id: str, *, definition_hash: str | None = None) -> Checkpoint | None:
        key = self._key(package, run_id)
        with self._lock:
            data = self._files.get(key)
        if data is None:
            return None
        checkpoint = decode(data, source=f"memory:{package}/{run_id}")
        if definition_hash is not None and checkpoint.definition_hash != definition_hash:
            raise CheckpointMismatch(package, checkpoint.definition_hash, definition_hash)
        return checkpoint

    def save(self, checkpoint: Checkpoint) -> int:
        key = self._key(checkpoint.package, checkpoint.run_id)
        data = encode(checkpoint)
        if len(data) > self.max_bytes:
            raise CheckpointTooLarge(
                f"checkpoint of run {checkpoint.run_id!r} is {len(data)} bytes, "
                f"over the limit of {self.max_bytes}"
            )
        with self._lock:
            self._check_epoch(key, checkpoint.epoch)
            self._epochs[key] = checkpoint.epoch
            self._files[key] = data
            self.writes += 1
        return len(data)

    def delete(self, package: str, run_id: str, *, epoch: int) -> None:
        key = self._key(package, run_id)
        with self._lock:
            self._check_epoch(key, epoch)
            self._files.pop(key, None)

    def purge(self, package: str, run_id: str) -> bool:
        """Forget the run, its epoch included (finished runs only, see the protocol)."""
        key = self._key(package, run_id)
        with self._lock:
            found = self._files.pop(key, None) is not None
            return self._epochs.pop(key, None) is not None or found

    def fence(self, package: str, run_id: str, epoch: int) -> int:
        key = self._key(package, run_id)
        with self._lock:
            self._epochs[key] = max(self._epochs.get(key, 0), epoch)
            return self._epochs[key]

    def next_epoch(self, package: str, run_id: str) -> int:
        key = self._key(package, run_id)
        with self._lock:
            self._epochs[key] = self._epochs.get(key, 0) + 1
            return self._epochs[key]

    def epoch(self, package: str, run_id: str) -> int:
        key = self._key(package, run_id)
        with self._lock:
            return self._epochs.get(key, 0)

    def _check_epoch(self, key: tuple[str, str], epoch: int) -> None:
        stored = self._epochs.get(key, 0)
        if epoch < stored:
            raise Fenced(key[1], epoch, stored)
