"""A checkpoint store on a POSIX directory (a local disk or an NFS mount shared by all nodes).

Layout of one run, under ``<root>/<package>/<run_id>/`` (``docs/checkpoints.md``)::

    snapshot-<g>.json      the snapshot of generation g: the whole checkpoint, format 2
    journal-<g>.log        the changes since snapshot g, one checksummed JSON line each
    epoch                  highest epoch ever recorded for the run (the fence)
    .lock                  flock(2) target serialising writers across processes
    checkpoint.json        a format-1 checkpoint left by the previous version (read as
    checkpoint.prev.json   generations 0 and -1; removed once a newer one is written)

The newest generation and the one before it are kept. A snapshot is written
atomically (temp file, fsync, rename, fsync of the directory) and never changed;
a journal is only appended to (``O_APPEND``, one ``write`` and one ``fsync`` per
append). Every write takes the exclusive lock and checks the epoch file first;
the epoch file is raised before the data it guards is written, so a crash in
between leaves the fence higher than the data, never lower. The whole directory
goes only when the retention purge removes a finished run
(:meth:`FilesystemCheckpointStore.purge`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path

from checkpoints.errors import (
    CheckpointCorrupt,
    CheckpointError,
    CheckpointMismatch,
    CheckpointTooLarge,
    CheckpointUnavailable,
    Fenced,
)
from checkpoints.format import Checkpoint, encode, verify
from checkpoints.generations import Generation, read_generations
from checkpoints.ids import validate_package_name, validate_run_id
from checkpoints.journal import Change
from checkpoints.memory import DEFAULT_MAX_BYTES
from checkpoints.writer import JournalWriter

log = logging.getLogger(__name__)

EPOCH = "epoch"
LOCK = ".lock"
LEGACY = {0: "checkpoint.json", -1: "checkpoint.prev.json"}
_SNAPSHOT = re.compile(r"snapshot-([1-9][0-9]*)\.json")
_JOURNAL = re.compile(r"journal-([1-9][0-9]*)\.log")


def snapshot_name(generation: int) -> str:
    return LEGACY.get(generation) or f"snapshot-{generation}.json"


def journal_name(generation: int) -> str:
    return f"journal-{generation}.log"


class FilesystemCheckpointStore:
    """:class:`~checkpoints.store.CheckpointStore` over a directory shared by every node."""

    def __init__(self, root: str | os.PathLike[str], *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        # flock excludes other processes; this lock excludes threads sharing the store.
        self._thread_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"FilesystemCheckpointStore({str(self.root)!r})"

    def check(self) -> None:
        """Raise :class:`CheckpointUnavailable` unless this process can write under the root.

        The root is created when missing (as a first save would); a file is then written in
        it and removed. Nodes and schedulers call this at start, so a root that is a file, on a
        read-only mount or not theirs to write fails them at once, naming it, and not each
        run's attempt later.
        """
        try:
            if self.root.exists() and not self.root.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(self.root))
            self.root.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=".write-check-", dir=self.root)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise CheckpointUnavailable(
                f"checkpoint root {str(self.root)!r} is not a directory this process can write: {exc}"
            ) from exc

    def run_dir(self, package: str, run_id: str) -> Path:
        """Return the run's directory; both ids are validated before they touch a path."""
        return self.root / validate_package_name(package) / validate_run_id(run_id)

    def load(self, package: str, run_id: str, *, definition_hash: str | None = None) -> Checkpoint | None:
        directory = self.run_dir(package, run_id)
        if not directory.is_dir():
            return None
        with self._locked(directory, exclusive=False):
            checkpoint = read_generations(
                _generations(directory), package=package, run_id=run_id, where=str(directory), logger=log
            )
        stale = checkpoint is not None and checkpoint.definition_hash != definition_hash
        if checkpoint is not None and definition_hash is not None and stale:
            raise CheckpointMismatch(package, checkpoint.definition_hash, definition_hash)
        return checkpoint

    def open(self, checkpoint: Checkpoint) -> FilesystemCheckpointWriter:
        directory = self.run_dir(checkpoint.package, checkpoint.run_id)
        data = self.encoded(checkpoint)
        directory.mkdir(parents=True, exist_ok=True)
        with self._locked(directory, exclusive=True):
            stored = self._read_epoch(directory)
            if checkpoint.epoch < stored:
                raise Fenced(checkpoint.run_id, checkpoint.epoch, stored)
            if checkpoint.epoch > stored:
                self._write_epoch(directory, checkpoint.epoch)
            generation = self._new_generation(directory, data)
        run_id, epoch = checkpoint.run_id, checkpoint.epoch
        return FilesystemCheckpointWriter(self, directory, run_id, epoch, generation, len(data))

    def save(self, checkpoint: Checkpoint) -> int:
        writer = self.open(checkpoint)
        writer.close()
        return writer.snapshot_bytes

    def delete(self, package: str, run_id: str, *, epoch: int) -> None:
        directory = self.run_dir(package, run_id)
        if not directory.is_dir():
            return
        with self._locked(directory, exclusive=True):
            stored = self._read_epoch(directory)
            if epoch < stored:
                raise Fenced(run_id, epoch, stored)
            for path in _data_files(directory):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
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

    # -- for the writer ----------------------------------------------------------------

    def encoded(self, checkpoint: Checkpoint) -> bytes:
        """The snapshot bytes of ``checkpoint``; ``CheckpointTooLarge`` over ``max_bytes``."""
        data = encode(checkpoint)
        if len(data) > self.max_bytes:
            raise CheckpointTooLarge(
                f"checkpoint of run {checkpoint.run_id!r} is {len(data)} bytes, "
                f"over the limit of {self.max_bytes}"
            )
        return data

    @contextlib.contextmanager
    def _locked(self, directory: Path | str, *, exclusive: bool) -> Iterator[None]:
        with self._thread_lock:
            fd = os.open(os.path.join(directory, LOCK), os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
                yield
            finally:
                os.close(fd)  # closing the descriptor releases the flock

    def _new_generation(self, directory: Path, data: bytes) -> int:
        """Write ``data`` as the snapshot of a new generation; the caller holds the exclusive lock.

        The snapshot is renamed into place before its (empty) journal is created,
        so a crash in between leaves a generation whose journal is simply missing.
        Then every generation older than the newest intact one before it is
        removed: after a fallback, a damaged snapshot must not push out the good one.
        """
        numbers = _numbers(directory)
        new = max(numbers, default=0) + 1
        temp = _write_temp(directory, snapshot_name(new), data)
        with _removed_on_error(temp):
            os.replace(temp, directory / snapshot_name(new))
        os.close(os.open(directory / journal_name(new), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        _fsync_dir(directory)
        keep = next((n for n in sorted(numbers, reverse=True) if _intact(directory / snapshot_name(n))), new)
        for path in _data_files(directory):
            if _number_of(path.name) < keep:
                path.unlink()
        return new

    def _read_epoch(self, directory: Path | str) -> int:
        path = os.path.join(directory, EPOCH)
        try:
            fd = os.open(path, os.O_RDONLY)  # os-level: this is read before every append
        except FileNotFoundError:
            return 0
        try:
            text = os.read(fd, 64).decode(errors="replace").strip()
        finally:
            os.close(fd)
        if not (text.isascii() and text.isdigit()):  # str.isdigit() also accepts "²"
            raise CheckpointCorrupt(f"{path}: not an epoch number: {text[:40]!r}")
        return int(text)

    @staticmethod
    def _write_epoch(directory: Path, epoch: int) -> None:
        temp = _write_temp(directory, EPOCH, f"{epoch}\n".encode())
        with _removed_on_error(temp):
            os.replace(temp, directory / EPOCH)
        _fsync_dir(directory)


class FilesystemCheckpointWriter(JournalWriter):
    """:class:`~checkpoints.store.CheckpointWriter` appending to a journal file."""

    def __init__(
        self,
        store: FilesystemCheckpointStore,
        directory: Path,
        run_id: str,
        epoch: int,
        generation: int,
        snapshot_bytes: int,
    ) -> None:
        super().__init__(store, run_id, epoch, snapshot_bytes)
        self._store, self._directory, self._generation = store, directory, generation
        self._dir = str(directory)  # plain strings: appends are the hot path, pathlib is slow there
        self._failed: str | None = None

    def __repr__(self) -> str:
        return f"FilesystemCheckpointWriter({str(self._directory)!r}, epoch={self._epoch})"

    @property
    def generation(self) -> int:
        return self._generation

    def append(self, changes: Sequence[Change]) -> int:
        if not changes:
            return 0
        data = self._records(changes)
        with self._store._locked(self._dir, exclusive=True):
            self._check_current()
            with self._journal() as fd:
                try:
                    _write_all(fd, data)
                    os.fsync(fd)
                except BaseException as exc:
                    self._failed = f"an earlier append failed ({exc})"
                    with contextlib.suppress(OSError):
                        os.ftruncate(fd, self._journal_bytes)  # no partial record stays behind
                    raise
        self._appended(len(changes), len(data))
        return len(data)

    def compact(self, checkpoint: Checkpoint) -> int:
        self._check_compaction(checkpoint)
        data = self._store.encoded(checkpoint)
        with self._store._locked(self._directory, exclusive=True):
            self._check_current()
            generation = self._store._new_generation(self._directory, data)
        self._generation = generation
        self._compacted(len(data))
        return len(data)

    def close(self) -> None:
        """Nothing to release: the journal is open only during an append."""

    def _check_current(self) -> None:
        """Refuse to write unless this writer's epoch and generation are still the newest."""
        if self._failed is not None:
            raise CheckpointError(f"checkpoint of run {self._run_id!r} cannot be written: {self._failed}")
        stored = self._store._read_epoch(self._dir)
        if self._epoch < stored:
            raise Fenced(self._run_id, self._epoch, stored)
        if os.path.exists(os.path.join(self._dir, snapshot_name(self._generation + 1))):
            raise CheckpointError(
                f"checkpoint of run {self._run_id!r}: another writer of epoch {self._epoch} "
                f"began generation {self._generation + 1}; this writer must stop"
            )

    @contextlib.contextmanager
    def _journal(self) -> Iterator[int]:
        """The journal, open for one append; checks that nobody else changed it.

        Nothing stays open between appends: a file open for writing would keep the
        file system from being remounted read-only, and on NFS the close is what
        makes the append visible to other clients (close-to-open consistency).
        """
        path = os.path.join(self._dir, journal_name(self._generation))
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        except FileNotFoundError:
            raise CheckpointError(
                f"checkpoint of run {self._run_id!r} was deleted while its writer was open"
            ) from None
        try:
            if os.fstat(fd).st_size != self._journal_bytes:
                raise CheckpointError(
                    f"journal {journal_name(self._generation)} of run {self._run_id!r} was changed "
                    "by another writer"
                )
            yield fd
        finally:
            os.close(fd)


def _numbers(directory: Path) -> set[int]:
    """The generation numbers with a snapshot or a journal in ``directory``."""
    return {_number_of(p.name) for p in _data_files(directory)}


def _number_of(name: str) -> int:
    """The generation of one of :func:`_data_files`' names."""
    for number, legacy in LEGACY.items():
        if name == legacy:
            return number
    match = _SNAPSHOT.fullmatch(name) or _JOURNAL.fullmatch(name)
    if match is None:
        raise ValueError(f"not a checkpoint file name: {name!r}")
    return int(match.group(1))


def _data_files(directory: Path) -> list[Path]:
    """Snapshots, journals and format-1 files of a run (not the epoch, the lock or temp files)."""
    names = set(LEGACY.values())
    return [
        p
        for p in directory.iterdir()
        if p.name in names or _SNAPSHOT.fullmatch(p.name) or _JOURNAL.fullmatch(p.name)
    ]


def _generations(directory: Path) -> list[Generation]:
    """What :func:`read_generations` needs to read the run's generations from its files."""
    generations = []
    for number in sorted(_numbers(directory)):
        snapshot, journal = directory / snapshot_name(number), directory / journal_name(number)
        generations.append(
            Generation(
                number,
                partial(snapshot.read_bytes) if snapshot.exists() else None,
                partial(journal.read_bytes) if number > 0 and journal.exists() else None,
                str(snapshot),
                str(journal),
            )
        )
    return generations


def _write_temp(directory: Path, name: str, data: bytes) -> Path:
    """Write ``data`` to a fresh temp file beside ``name`` and fsync it.

    A failed write (a full disk, say) removes the temp file: each writer's temp
    name is unique, so a leftover would never be overwritten and would pile up.
    """
    temp = directory / f".{name}.tmp-{os.getpid()}-{threading.get_ident()}"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with _removed_on_error(temp):
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
    return temp


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


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
