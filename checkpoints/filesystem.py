"""A checkpoint store on a POSIX directory (a local disk or an NFS mount shared by all nodes).

Layout of one run, under ``<root>/<package>/<run_id>/``::

    checkpoint.json        latest generation
    checkpoint.prev.json   the generation before it (the fallback for a damaged latest)
    epoch                  highest epoch ever recorded for the run (the fence)
    .lock                  flock(2) target serialising writers across processes

The whole directory goes only when the retention purge removes a finished run
(:meth:`FilesystemCheckpointStore.purge`).

Writes are atomic: temp file, fsync, rename, fsync of the directory. The epoch
file is raised before the checkpoint it guards is written, so a crash in
between leaves the fence higher than the data, never lower.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

from checkpoints.errors import CheckpointCorrupt, CheckpointMismatch, CheckpointTooLarge, Fenced
from checkpoints.format import Checkpoint, decode, encode, verify
from checkpoints.ids import validate_package_name, validate_run_id
from checkpoints.memory import DEFAULT_MAX_BYTES

log = logging.getLogger(__name__)

LATEST = "checkpoint.json"
PREVIOUS = "checkpoint.prev.json"
EPOCH = "epoch"
LOCK = ".lock"


class FilesystemCheckpointStore:
    """:class:`~checkpoints.store.CheckpointStore` over a directory shared by every node."""

    def __init__(self, root: str | os.PathLike[str], *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        # flock excludes other processes; this lock excludes threads sharing the store.
        self._thread_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"FilesystemCheckpointStore({str(self.root)!r})"

    def run_dir(self, package: str, run_id: str) -> Path:
        """Return the run's directory; both ids are validated before they touch a path."""
        return self.root / validate_package_name(package) / validate_run_id(run_id)

    def load(self, package: str, run_id: str, *, definition_hash: str | None = None) -> Checkpoint | None:
        directory = self.run_dir(package, run_id)
        if not directory.is_dir():
            return None
        with self._locked(directory, exclusive=False):
            checkpoint = self._read_generations(directory)
        stale = checkpoint is not None and checkpoint.definition_hash != definition_hash
        if checkpoint is not None and definition_hash is not None and stale:
            raise CheckpointMismatch(package, checkpoint.definition_hash, definition_hash)
        return checkpoint

    def save(self, checkpoint: Checkpoint) -> int:
        directory = self.run_dir(checkpoint.package, checkpoint.run_id)
        data = encode(checkpoint)
        if len(data) > self.max_bytes:
            raise CheckpointTooLarge(
                f"checkpoint of run {checkpoint.run_id!r} is {len(data)} bytes, "
                f"over the limit of {self.max_bytes}"
            )
        directory.mkdir(parents=True, exist_ok=True)
        with self._locked(directory, exclusive=True):
            stored = self._read_epoch(directory)
            if checkpoint.epoch < stored:
                raise Fenced(checkpoint.run_id, checkpoint.epoch, stored)
            if checkpoint.epoch > stored:
                self._write_epoch(directory, checkpoint.epoch)
            latest = directory / LATEST
            temp = _write_temp(directory, LATEST, data)
            with _removed_on_error(temp):
                # Only an intact latest generation becomes the previous one: after a
                # fallback, the damaged file must not push out the good copy.
                if _intact(latest):
                    os.replace(latest, directory / PREVIOUS)
                os.replace(temp, latest)
            _fsync_dir(directory)
        return len(data)

    def delete(self, package: str, run_id: str, *, epoch: int) -> None:
        directory = self.run_dir(package, run_id)
        if not directory.is_dir():
            return
        with self._locked(directory, exclusive=True):
            stored = self._read_epoch(directory)
            if epoch < stored:
                raise Fenced(run_id, epoch, stored)
            for name in (LATEST, PREVIOUS):
                with contextlib.suppress(FileNotFoundError):
                    (directory / name).unlink()
            _fsync_dir(directory)

    def purge(self, package: str, run_id: str) -> bool:
        """Remove the run's directory, epoch file included (see the protocol: finished runs only).

        The lock file goes last, after the rest was removed under it; a directory that is
        not empty then (something wrote into it meanwhile) raises ``OSError``.
        """
        directory = self.run_dir(package, run_id)
        if not directory.is_dir():
            return False
        with self._locked(directory, exclusive=True):
            for entry in directory.iterdir():
                if entry.name == LOCK:
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink(missing_ok=True)
        (directory / LOCK).unlink(missing_ok=True)
        directory.rmdir()
        _fsync_dir(directory.parent)
        return True

    def fence(self, package: str, run_id: str, epoch: int) -> int:
        directory = self.run_dir(package, run_id)
        directory.mkdir(parents=True, exist_ok=True)
        with self._locked(directory, exclusive=True):
            stored = self._read_epoch(directory)
            if epoch > stored:
                self._write_epoch(directory, epoch)
                return epoch
            return stored

    def next_epoch(self, package: str, run_id: str) -> int:
        directory = self.run_dir(package, run_id)
        directory.mkdir(parents=True, exist_ok=True)
        with self._locked(directory, exclusive=True):
            epoch = self._read_epoch(directory) + 1
            self._write_epoch(directory, epoch)
            return epoch

    def epoch(self, package: str, run_id: str) -> int:
        directory = self.run_dir(package, run_id)
        if not directory.is_dir():
            return 0
        with self._locked(directory, exclusive=False):
            return self._read_epoch(directory)

    @contextlib.contextmanager
    def _locked(self, directory: Path, *, exclusive: bool) -> Iterator[None]:
        with self._thread_lock:
            fd = os.open(directory / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
                yield
            finally:
                os.close(fd)  # closing the descriptor releases the flock

    def _read_generations(self, directory: Path) -> Checkpoint | None:
        """Return the newest readable generation; the caller holds the lock."""
        failures: list[str] = []
        for name in (LATEST, PREVIOUS):
            path = directory / name
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                if name == LATEST and (directory / PREVIOUS).exists():
                    failures.append(f"{path}: missing")
                continue
            try:
                checkpoint = decode(data, source=str(path))
            except CheckpointCorrupt as exc:
                failures.append(str(exc))
                continue
            if (checkpoint.package, checkpoint.run_id) != (directory.parent.name, directory.name):
                failures.append(f"{path}: belongs to {checkpoint.package}/{checkpoint.run_id}")
                continue
            if failures:
                log.warning(
                    "checkpoint %s unreadable (%s); using the previous generation",
                    directory / LATEST,
                    "; ".join(failures),
                )
            return checkpoint
        if failures:
            raise CheckpointCorrupt(
                "no readable checkpoint generation is left in "
                f"{directory}: {'; '.join(failures)}"
                + ("" if len(failures) > 1 else "; there is no previous generation")
            )
        return None

    @staticmethod
    def _read_epoch(directory: Path) -> int:
        try:
            text = (directory / EPOCH).read_text().strip()
        except FileNotFoundError:
            return 0
        if not (text.isascii() and text.isdigit()):  # str.isdigit() also accepts "²"
            raise CheckpointCorrupt(f"{directory / EPOCH}: not an epoch number: {text[:40]!r}")
        return int(text)

    @staticmethod
    def _write_epoch(directory: Path, epoch: int) -> None:
        temp = _write_temp(directory, EPOCH, f"{epoch}\n".encode())
        with _removed_on_error(temp):
            os.replace(temp, directory / EPOCH)
        _fsync_dir(directory)


def _write_temp(directory: Path, name: str, data: bytes) -> Path:
    """Write ``data`` to a fresh temp file beside ``name`` and fsync it.

    A failed write (a full disk, say) removes the temp file: each writer's temp
    name is unique, so a leftover would never be overwritten and would pile up.
    """
    temp = directory / f".{name}.tmp-{os.getpid()}-{threading.get_ident()}"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with _removed_on_error(temp):
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
    return temp


@contextlib.contextmanager
def _removed_on_error(temp: Path) -> Iterator[None]:
    """Unlink ``temp`` if the block raises, then re-raise."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise


def _intact(path: Path) -> bool:
    try:
        return verify(path.read_bytes())
    except FileNotFoundError:
        return False


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
