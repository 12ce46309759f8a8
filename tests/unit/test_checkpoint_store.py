"""The checkpoint store family: in-memory stub and filesystem store, one contract."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from checkpoints import (
    Checkpoint,
    CheckpointCorrupt,
    CheckpointError,
    CheckpointMismatch,
    CheckpointStore,
    CheckpointTooLarge,
    CheckpointUnavailable,
    Fenced,
    FilesystemCheckpointStore,
    InMemoryCheckpointStore,
    InvalidIdentifier,
    SecretBox,
    TaskRecord,
    decode,
    encode,
    validate_package_name,
    validate_run_id,
)
from checkpoints.s3 import S3CheckpointStore
from tests.support.moto import NOT_ATOMIC
from tests.support.seaweed import objects

PACKAGE = "etl-daily"
RUN = "run-0001"
HASH_V1 = hashlib.sha256(b"definition v1").hexdigest()
HASH_V2 = hashlib.sha256(b"definition v2").hexdigest()
FS_LOGGER = "checkpoints.filesystem"


def make(epoch: int = 1, seq: int = 0, **fields: object) -> Checkpoint:
    values: dict[str, object] = {
        "package": PACKAGE,
        "definition_hash": HASH_V1,
        "run_id": RUN,
        "epoch": epoch,
        "tasks": {"extract": TaskRecord(state="succeeded", output={"rows": seq})},
        "items": {"load": {"2024-05-01": {"n": seq}}},
        "variables": {"date": "2024-05-01"},
        "progress": {"transform": seq},
    }
    values.update(fields)
    return Checkpoint.model_validate(values)


@dataclass
class Backend:
    """A store under test plus a way to see exactly what it holds."""

    store: InMemoryCheckpointStore | FilesystemCheckpointStore | S3CheckpointStore
    snapshot: Callable[[], object]


def _fs_snapshot(root: Path) -> Callable[[], object]:
    def snapshot() -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    return snapshot


def _memory_snapshot(store: InMemoryCheckpointStore) -> Callable[[], object]:
    def snapshot() -> tuple[bytes | None, int]:
        loaded = store.load(PACKAGE, RUN)
        return (None if loaded is None else encode(loaded)), store.epoch(PACKAGE, RUN)

    return snapshot


@pytest.fixture(params=["memory", "filesystem", "s3", "s3-moto"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "memory":
        memory = InMemoryCheckpointStore()
        return Backend(memory, _memory_snapshot(memory))
    if request.param.startswith("s3"):
        s3 = request.getfixturevalue("seaweed" if request.param == "s3" else "moto_s3").store()
        return Backend(s3, lambda: objects(s3))
    root = tmp_path / "checkpoints"
    return Backend(FilesystemCheckpointStore(root), _fs_snapshot(root))


@pytest.fixture
def store(backend: Backend) -> InMemoryCheckpointStore | FilesystemCheckpointStore | S3CheckpointStore:
    return backend.store


@pytest.fixture
def fs(tmp_path: Path) -> FilesystemCheckpointStore:
    return FilesystemCheckpointStore(tmp_path / "checkpoints")


@pytest.fixture
def fs_warnings(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.WARNING, logger=FS_LOGGER):
        yield caplog


def run_files(fs: FilesystemCheckpointStore) -> set[str]:
    return {p.name for p in fs.run_dir(PACKAGE, RUN).iterdir()}


def generation_files(*numbers: int) -> set[str]:
    """The files of the given generations (format 2: a snapshot and its journal each)."""
    return {f"snapshot-{n}.json" for n in numbers} | {f"journal-{n}.log" for n in numbers}


def snapshots(fs: FilesystemCheckpointStore, run_id: str = RUN) -> list[Path]:
    """The run's snapshot files, oldest generation first."""
    found = fs.run_dir(PACKAGE, run_id).glob("snapshot-*.json")
    return sorted(found, key=lambda p: int(p.stem.split("-")[1]))


def latest(fs: FilesystemCheckpointStore) -> Path:
    return snapshots(fs)[-1]


def previous(fs: FilesystemCheckpointStore) -> Path:
    return snapshots(fs)[-2]


# -- the shared contract -----------------------------------------------------------


def test_both_stores_satisfy_the_protocol(store: CheckpointStore) -> None:
    assert isinstance(store, CheckpointStore)
    store.check()  # usable: nothing raised


def test_round_trip_of_a_full_checkpoint(store: CheckpointStore) -> None:
    box = SecretBox("k")
    checkpoint = make(epoch=2, seq=7, attempt=3, secrets={"password": box.encrypt("s3cr3t!")})
    written = store.save(checkpoint)
    assert written == len(encode(checkpoint))
    loaded = store.load(PACKAGE, RUN, definition_hash=HASH_V1)
    assert loaded == checkpoint
    assert loaded is not checkpoint
    assert box.decrypt("password", loaded.secrets["password"]) == "s3cr3t!"
    assert store.epoch(PACKAGE, RUN) == 2


def test_unknown_run_loads_as_none_with_epoch_zero(store: CheckpointStore) -> None:
    assert store.load(PACKAGE, RUN) is None
    assert store.load(PACKAGE, RUN, definition_hash=HASH_V1) is None
    assert store.epoch(PACKAGE, RUN) == 0


def test_latest_save_wins_and_runs_are_independent(store: CheckpointStore) -> None:
    for seq in range(3):
        store.save(make(epoch=1, seq=seq))
    store.save(make(epoch=5, seq=99, run_id="other-run"))
    loaded = store.load(PACKAGE, RUN)
    assert loaded is not None and loaded.progress == {"transform": 2}
    assert store.epoch(PACKAGE, RUN) == 1
    assert store.epoch(PACKAGE, "other-run") == 5


def test_delete_removes_the_checkpoint(store: CheckpointStore) -> None:
    store.save(make(epoch=1))
    store.save(make(epoch=1, seq=1))
    store.delete(PACKAGE, RUN, epoch=1)
    assert store.load(PACKAGE, RUN) is None
    store.delete(PACKAGE, RUN, epoch=1)  # deleting again is harmless
    store.delete(PACKAGE, "never-written", epoch=1)


# -- definition hash -----------------------------------------------------------


def test_load_with_another_definition_hash_is_a_mismatch(store: CheckpointStore) -> None:
    store.save(make())
    with pytest.raises(CheckpointMismatch) as caught:
        store.load(PACKAGE, RUN, definition_hash=HASH_V2)
    message = str(caught.value)
    assert HASH_V1[:16] in message and HASH_V2[:16] in message
    assert repr(PACKAGE) in message
    assert "--restart never" in message
    assert (caught.value.stored_hash, caught.value.current_hash) == (HASH_V1, HASH_V2)
    assert isinstance(caught.value, CheckpointError)
    # Without a hash to compare, or with the right one, the checkpoint loads.
    assert store.load(PACKAGE, RUN) is not None
    assert store.load(PACKAGE, RUN, definition_hash=HASH_V1) is not None


# -- fencing -------------------------------------------------------------------


def test_lower_epoch_save_is_fenced_and_changes_nothing(backend: Backend) -> None:
    store = backend.store
    store.save(make(epoch=2, seq=1))
    store.save(make(epoch=2, seq=2))
    before = backend.snapshot()
    with pytest.raises(Fenced) as caught:
        store.save(make(epoch=1, seq=3))
    assert (caught.value.epoch, caught.value.stored_epoch, caught.value.run_id) == (1, 2, RUN)
    assert "epoch 1 is older than the stored epoch 2" in str(caught.value)
    assert backend.snapshot() == before
    loaded = store.load(PACKAGE, RUN)
    assert loaded is not None and (loaded.epoch, loaded.progress) == (2, {"transform": 2})


def test_equal_epoch_may_write_again_and_higher_epoch_takes_over(store: CheckpointStore) -> None:
    store.save(make(epoch=1, seq=1))
    store.save(make(epoch=1, seq=2))
    store.save(make(epoch=4, seq=3))
    assert store.epoch(PACKAGE, RUN) == 4
    with pytest.raises(Fenced):
        store.save(make(epoch=3, seq=4))
    loaded = store.load(PACKAGE, RUN)
    assert loaded is not None and (loaded.epoch, loaded.progress) == (4, {"transform": 3})


def test_fence_refuses_older_writers_before_the_new_one_writes(backend: Backend) -> None:
    store = backend.store
    store.save(make(epoch=1, seq=1))
    assert store.fence(PACKAGE, RUN, 3) == 3
    before = backend.snapshot()
    with pytest.raises(Fenced, match="epoch 1 is older than the stored epoch 3"):
        store.save(make(epoch=1, seq=2))
    with pytest.raises(Fenced):
        store.save(make(epoch=2, seq=2))
    assert backend.snapshot() == before
    # Fencing never lowers the record.
    assert store.fence(PACKAGE, RUN, 2) == 3
    assert store.epoch(PACKAGE, RUN) == 3
    store.save(make(epoch=3, seq=5))
    loaded = store.load(PACKAGE, RUN)
    assert loaded is not None and loaded.progress == {"transform": 5}


def test_fence_on_a_fresh_run_records_the_epoch(store: CheckpointStore) -> None:
    assert store.fence(PACKAGE, RUN, 7) == 7
    assert store.epoch(PACKAGE, RUN) == 7
    assert store.load(PACKAGE, RUN) is None
    with pytest.raises(Fenced):
        store.save(make(epoch=6))


def test_next_epoch_counts_up_from_the_recorded_epoch(store: CheckpointStore) -> None:
    assert [store.next_epoch(PACKAGE, RUN) for _ in range(3)] == [1, 2, 3]
    store.save(make(epoch=10))
    assert store.next_epoch(PACKAGE, RUN) == 11
    store.fence(PACKAGE, RUN, 20)
    assert store.next_epoch(PACKAGE, RUN) == 21
    assert store.epoch(PACKAGE, RUN) == 21
    with pytest.raises(Fenced):
        store.save(make(epoch=20))


def test_next_epoch_from_many_threads_never_repeats(
    store: CheckpointStore, request: pytest.FixtureRequest
) -> None:
    if request.node.callspec.params.get("backend") == "s3-moto":
        pytest.skip(NOT_ATOMIC)  # 8 threads racing conditional writes: seen hanging with moto 5.2.5
    threads, calls = 8, 40
    results: list[list[int]] = [[] for _ in range(threads)]
    barrier = threading.Barrier(threads)

    def claim(slot: list[int]) -> None:
        barrier.wait(timeout=10)
        slot.extend(store.next_epoch(PACKAGE, RUN) for _ in range(calls))

    workers = [threading.Thread(target=claim, args=(slot,)) for slot in results]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=30)
        assert not worker.is_alive()
    claimed = [epoch for slot in results for epoch in slot]
    assert sorted(claimed) == list(range(1, threads * calls + 1))
    assert all(slot == sorted(slot) for slot in results)
    assert store.epoch(PACKAGE, RUN) == threads * calls


def test_racing_threads_never_let_the_older_epoch_win(store: CheckpointStore) -> None:
    barrier = threading.Barrier(2)
    outcomes: dict[int, list[str]] = {1: [], 2: []}

    def write(epoch: int) -> None:
        barrier.wait(timeout=10)
        for seq in range(60):
            try:
                store.save(make(epoch=epoch, seq=seq))
                outcomes[epoch].append("ok")
            except Fenced:
                outcomes[epoch].append("fenced")

    workers = [threading.Thread(target=write, args=(epoch,)) for epoch in (1, 2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=30)
        assert not worker.is_alive()
    assert outcomes[2] == ["ok"] * 60
    # Once the older writer is fenced it stays fenced.
    first_fenced = outcomes[1].index("fenced") if "fenced" in outcomes[1] else 60
    assert outcomes[1][first_fenced:] == ["fenced"] * (60 - first_fenced)
    loaded = store.load(PACKAGE, RUN)
    assert loaded is not None and (loaded.epoch, loaded.progress) == (2, {"transform": 59})


def test_stale_delete_is_fenced_and_deletes_nothing(backend: Backend) -> None:
    store = backend.store
    store.save(make(epoch=1, seq=1))
    store.save(make(epoch=2, seq=2))
    before = backend.snapshot()
    with pytest.raises(Fenced, match="epoch 1 is older than the stored epoch 2"):
        store.delete(PACKAGE, RUN, epoch=1)
    assert backend.snapshot() == before
    assert store.load(PACKAGE, RUN) is not None


def test_epoch_record_survives_delete(store: CheckpointStore) -> None:
    store.save(make(epoch=3))
    store.delete(PACKAGE, RUN, epoch=3)
    assert store.load(PACKAGE, RUN) is None
    assert store.epoch(PACKAGE, RUN) == 3
    with pytest.raises(Fenced):
        store.save(make(epoch=2))  # a stale writer cannot resurrect the finished run
    assert store.load(PACKAGE, RUN) is None
    assert store.next_epoch(PACKAGE, RUN) == 4


# -- size limit -----------------------------------------------------------------


def test_checkpoint_over_max_bytes_is_refused_and_nothing_written(tmp_path: Path) -> None:
    checkpoint = make(epoch=2)
    size = len(encode(checkpoint))
    root = tmp_path / "checkpoints"
    for store in (
        InMemoryCheckpointStore(max_bytes=size - 1),
        FilesystemCheckpointStore(root, max_bytes=size - 1),
    ):
        with pytest.raises(CheckpointTooLarge) as caught:
            store.save(checkpoint)
        assert f"{size} bytes" in str(caught.value) and f"limit of {size - 1}" in str(caught.value)
        assert isinstance(caught.value, CheckpointError)
        assert store.load(PACKAGE, RUN) is None
        assert store.epoch(PACKAGE, RUN) == 0  # the refused write did not raise the fence
    assert list(tmp_path.iterdir()) == []
    assert FilesystemCheckpointStore(root, max_bytes=size).save(checkpoint) == size


def test_too_large_save_keeps_the_previous_checkpoint(backend: Backend) -> None:
    store = backend.store
    small = make(epoch=1)
    store.save(small)
    before = backend.snapshot()
    store.max_bytes = len(encode(small)) + 10
    with pytest.raises(CheckpointTooLarge):
        store.save(make(epoch=2, variables={"blob": "x" * 1000}))
    assert backend.snapshot() == before
    assert store.epoch(PACKAGE, RUN) == 1


def test_unencodable_checkpoint_is_a_checkpoint_error_and_writes_nothing(
    backend: Backend,
) -> None:
    store = backend.store
    store.save(make(epoch=1))
    before = backend.snapshot()
    with pytest.raises(CheckpointError, match="cannot be encoded"):
        store.save(make(epoch=2, variables={"path": "bad-\udcff-name"}))
    assert backend.snapshot() == before


# -- identifiers ---------------------------------------------------------------

BAD_PACKAGES = ["../x", "..", ".", "a/b", "/abs", "x\x00y", "", "x" * 10_000, "Etl", "ETL", "a\n"]
BAD_RUN_IDS = ["../x", "..", ".", "a/b", "/abs", "r\x00", "", "r" * 10_000, "-r", "a b", "r\n"]


def _operations(
    store: InMemoryCheckpointStore | FilesystemCheckpointStore, package: str, run_id: str
) -> list[Callable[[], object]]:
    checkpoint = Checkpoint.model_construct(**{**make().model_dump(), "package": package, "run_id": run_id})
    return [
        lambda: store.save(checkpoint),
        lambda: store.load(package, run_id),
        lambda: store.delete(package, run_id, epoch=1),
        lambda: store.fence(package, run_id, 1),
        lambda: store.next_epoch(package, run_id),
        lambda: store.epoch(package, run_id),
    ]


@pytest.mark.parametrize("kind", ["memory", "filesystem"])
@pytest.mark.parametrize(
    ("package", "run_id"),
    [(p, RUN) for p in BAD_PACKAGES] + [(PACKAGE, r) for r in BAD_RUN_IDS],
)
def test_unsafe_identifiers_are_refused_before_any_file_is_touched(
    tmp_path: Path, kind: str, package: str, run_id: str
) -> None:
    root = tmp_path / "checkpoints"
    store = InMemoryCheckpointStore() if kind == "memory" else FilesystemCheckpointStore(root)
    for operation in _operations(store, package, run_id):
        with pytest.raises(InvalidIdentifier) as caught:
            operation()
        message = str(caught.value)
        assert message.startswith(("invalid package name", "invalid run id"))
        assert len(message) < 300  # a 10,000-character id is shown abbreviated
        assert "\x00" not in message  # shown with repr, never raw
    assert list(tmp_path.iterdir()) == []
    if isinstance(store, FilesystemCheckpointStore):
        with pytest.raises(InvalidIdentifier):
            store.run_dir(package, run_id)
    else:
        assert store.writes == 0


@pytest.mark.parametrize("value", [None, 7, b"run", ["run"]])
def test_non_string_identifiers_are_refused(value: object) -> None:
    with pytest.raises(InvalidIdentifier):
        validate_run_id(value)
    with pytest.raises(InvalidIdentifier):
        validate_package_name(value)


def test_invalid_identifier_is_both_a_checkpoint_error_and_a_value_error() -> None:
    with pytest.raises(CheckpointError):
        validate_run_id("..")
    with pytest.raises(ValueError, match="invalid run id '..'"):
        validate_run_id("..")


@pytest.mark.parametrize("run_id", ["a", "R", "0", "Run_2024-05-01", "x" * 128])
def test_ordinary_run_ids_are_accepted(run_id: str) -> None:
    assert validate_run_id(run_id) == run_id


def test_identifier_length_limits() -> None:
    assert validate_package_name("p" * 64) == "p" * 64
    with pytest.raises(InvalidIdentifier):
        validate_package_name("p" * 65)
    with pytest.raises(InvalidIdentifier):
        validate_run_id("r" * 129)


_PATHISH = st.text(alphabet="./\\\x00 -_aZ9é\n", min_size=0, max_size=12)
_RUN_LIKE = st.from_regex(r"[A-Za-z0-9._/-]{1,20}", fullmatch=True)
_PACKAGE_LIKE = st.from_regex(r"[a-z0-9._/-]{1,20}", fullmatch=True)
_PROPERTY = settings(
    max_examples=400,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow],
)


def _assert_single_safe_component(value: str) -> None:
    assert value not in ("", ".", "..")
    assert "/" not in value and "\\" not in value and "\x00" not in value
    assert not value.startswith("-")  # never read as a command-line option
    assert Path(value).parts == (value,)
    assert os.path.basename(value) == value


@_PROPERTY
@given(run_id=st.one_of(st.text(), _PATHISH, _RUN_LIKE), package=st.one_of(_PATHISH, _PACKAGE_LIKE))
def test_accepted_identifiers_are_one_safe_path_component(run_id: str, package: str) -> None:
    root = Path("/srv/orchestrator/checkpoints")
    store = FilesystemCheckpointStore(root)  # run_dir never touches the disk
    try:
        accepted_run = validate_run_id(run_id)
    except InvalidIdentifier:
        return
    assert accepted_run == run_id
    _assert_single_safe_component(run_id)
    try:
        validate_package_name(package)
    except InvalidIdentifier:
        with pytest.raises(InvalidIdentifier):
            store.run_dir(package, run_id)
        return
    _assert_single_safe_component(package)
    directory = store.run_dir(package, run_id)
    assert directory == root / package / run_id
    assert directory.parent.parent == root
    assert Path(os.path.normpath(directory)) == directory
    assert directory.is_relative_to(root)


# -- filesystem layout -------------------------------------------------------


def test_check_creates_a_missing_root_and_leaves_nothing_in_it(tmp_path: Path) -> None:
    root = tmp_path / "shared" / "checkpoints"
    FilesystemCheckpointStore(root).check()
    assert root.is_dir() and list(root.iterdir()) == []


@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_check_names_a_root_it_cannot_write(tmp_path: Path, where: str) -> None:
    afile = tmp_path / "not-a-directory"
    afile.write_text("x")
    root = afile if where == "a file" else afile / "checkpoints"
    store = FilesystemCheckpointStore(root)
    with pytest.raises(CheckpointUnavailable, match=f"checkpoint root '{root}' is not a directory"):
        store.check()
    assert afile.read_text() == "x"


def test_check_refuses_a_directory_without_write_permission(tmp_path: Path) -> None:
    root = tmp_path / "read-only"
    root.mkdir()
    root.chmod(0o555)
    try:
        if os.access(root, os.W_OK):
            pytest.skip("this user writes through permission bits (root)")
        with pytest.raises(CheckpointUnavailable, match="Permission denied"):
            FilesystemCheckpointStore(root).check()
    finally:
        root.chmod(0o755)


def test_filesystem_layout(fs: FilesystemCheckpointStore, tmp_path: Path) -> None:
    first, second = make(epoch=1, seq=1), make(epoch=2, seq=2)
    fs.save(first)
    directory = tmp_path / "checkpoints" / PACKAGE / RUN
    assert fs.run_dir(PACKAGE, RUN) == directory
    assert run_files(fs) == generation_files(1) | {"epoch", ".lock"}
    assert (directory / "snapshot-1.json").read_bytes() == encode(first)
    assert (directory / "journal-1.log").read_bytes() == b""
    assert (directory / "epoch").read_text() == "1\n"

    fs.save(second)
    assert run_files(fs) == generation_files(1, 2) | {"epoch", ".lock"}
    assert (directory / "snapshot-2.json").read_bytes() == encode(second)
    assert (directory / "snapshot-1.json").read_bytes() == encode(first)
    assert (directory / "epoch").read_text() == "2\n"

    for seq in range(3, 8):
        fs.save(make(epoch=2, seq=seq))
    assert run_files(fs) == generation_files(6, 7) | {"epoch", ".lock"}
    assert decode((directory / "snapshot-6.json").read_bytes()).progress == {"transform": 6}
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]


def test_read_operations_create_nothing(fs: FilesystemCheckpointStore, tmp_path: Path) -> None:
    assert fs.load(PACKAGE, RUN) is None
    assert fs.epoch(PACKAGE, RUN) == 0
    fs.delete(PACKAGE, RUN, epoch=5)
    assert list(tmp_path.iterdir()) == []


def test_delete_keeps_only_the_epoch_record(fs: FilesystemCheckpointStore) -> None:
    fs.save(make(epoch=1))
    fs.save(make(epoch=2))
    fs.delete(PACKAGE, RUN, epoch=2)
    assert run_files(fs) == {"epoch", ".lock"}
    assert (fs.run_dir(PACKAGE, RUN) / "epoch").read_text() == "2\n"


def test_a_second_store_on_the_same_root_sees_the_same_runs(
    fs: FilesystemCheckpointStore,
) -> None:
    fs.save(make(epoch=3, seq=4))
    other = FilesystemCheckpointStore(fs.root)
    loaded = other.load(PACKAGE, RUN)
    assert loaded is not None and loaded.progress == {"transform": 4}
    with pytest.raises(Fenced):
        other.save(make(epoch=2))


@pytest.mark.parametrize("failing", ["fsync", "replace", "write"])
def test_a_failed_write_leaves_no_temp_file_and_keeps_the_checkpoint(
    fs: FilesystemCheckpointStore, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    fs.save(make(epoch=1, seq=1))
    directory = fs.run_dir(PACKAGE, RUN)
    before = (directory / "snapshot-1.json").read_bytes()

    def disk_full(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, failing, disk_full)
    with pytest.raises(OSError, match="No space left"):
        fs.save(make(epoch=1, seq=2))
    monkeypatch.undo()
    assert run_files(fs) == generation_files(1) | {"epoch", ".lock"}
    assert (directory / "snapshot-1.json").read_bytes() == before
    fs.save(make(epoch=1, seq=3))  # the store still works afterwards
    assert run_files(fs) == generation_files(1, 2) | {"epoch", ".lock"}


@pytest.mark.parametrize("text", ["", "two\n", "-1\n", "\u00b2\n", "\u0661\n", "1.5\n"])
def test_a_damaged_epoch_file_is_reported_as_corrupt(fs: FilesystemCheckpointStore, text: str) -> None:
    fs.save(make(epoch=1))
    (fs.run_dir(PACKAGE, RUN) / "epoch").write_text(text)
    operations: list[Callable[[], object]] = [
        lambda: fs.epoch(PACKAGE, RUN),
        lambda: fs.save(make(epoch=5)),
        lambda: fs.next_epoch(PACKAGE, RUN),
    ]
    for operation in operations:
        with pytest.raises(CheckpointCorrupt, match="not an epoch number"):
            operation()


# -- corruption fallback (filesystem) -----------------------------------------


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) * 2 // 3])
    elif how == "flipped":
        damaged = bytearray(data)
        damaged[len(data) // 2] ^= 0x04
        path.write_bytes(bytes(damaged))
    else:
        raise AssertionError(how)


@pytest.mark.parametrize(
    ("how", "reason"),
    [("truncated", "truncated or malformed"), ("flipped", "checksum mismatch")],
)
def test_damaged_latest_falls_back_to_the_previous_generation(
    fs: FilesystemCheckpointStore, fs_warnings: pytest.LogCaptureFixture, how: str, reason: str
) -> None:
    fs.save(make(epoch=1, seq=1))
    fs.save(make(epoch=1, seq=2))
    newest = latest(fs)
    _damage(newest, how)
    loaded = fs.load(PACKAGE, RUN, definition_hash=HASH_V1)
    assert loaded is not None and loaded.progress == {"transform": 1}
    warnings = [r for r in fs_warnings.records if r.name == FS_LOGGER]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    message = warnings[0].getMessage()
    assert str(newest) in message and reason in message
    assert "using the previous generation" in message


def test_missing_latest_with_a_previous_generation_falls_back(
    fs: FilesystemCheckpointStore, fs_warnings: pytest.LogCaptureFixture
) -> None:
    # The newest generation's snapshot gone (a bad copy, a hand), its journal still there.
    fs.save(make(epoch=1, seq=1))
    fs.save(make(epoch=1, seq=2))
    latest(fs).unlink()
    assert run_files(fs) == generation_files(1, 2) - {"snapshot-2.json"} | {"epoch", ".lock"}
    loaded = fs.load(PACKAGE, RUN)
    assert loaded is not None and loaded.progress == {"transform": 1}
    assert "missing" in fs_warnings.text and "previous generation" in fs_warnings.text


def test_healthy_load_logs_no_warning(
    fs: FilesystemCheckpointStore, fs_warnings: pytest.LogCaptureFixture
) -> None:
    fs.save(make(epoch=1, seq=1))
    fs.save(make(epoch=1, seq=2))
    assert fs.load(PACKAGE, RUN) is not None
    assert fs_warnings.records == []


@pytest.mark.parametrize(("first", "second"), [("truncated", "flipped"), ("flipped", "truncated")])
def test_both_generations_damaged_is_corrupt(fs: FilesystemCheckpointStore, first: str, second: str) -> None:
    fs.save(make(epoch=1, seq=1))
    fs.save(make(epoch=1, seq=2))
    directory = fs.run_dir(PACKAGE, RUN)
    _damage(directory / "snapshot-2.json", first)
    _damage(directory / "snapshot-1.json", second)
    with pytest.raises(CheckpointCorrupt) as caught:
        fs.load(PACKAGE, RUN)
    message = str(caught.value)
    assert "no readable checkpoint generation is left" in message
    assert str(directory / "snapshot-2.json") in message
    assert str(directory / "snapshot-1.json") in message
    assert "there is no previous generation" not in message


@pytest.mark.parametrize("how", ["truncated", "flipped"])
def test_damaged_latest_without_previous_generation_is_corrupt(
    fs: FilesystemCheckpointStore, how: str
) -> None:
    fs.save(make(epoch=1, seq=1))
    _damage(latest(fs), how)
    with pytest.raises(CheckpointCorrupt) as caught:
        fs.load(PACKAGE, RUN)
    message = str(caught.value)
    assert "no readable checkpoint generation is left" in message
    assert message.endswith("there is no previous generation")


def test_fallback_still_checks_the_definition_hash(fs: FilesystemCheckpointStore) -> None:
    fs.save(make(epoch=1, seq=1))
    fs.save(make(epoch=1, seq=2))
    _damage(latest(fs), "flipped")
    with pytest.raises(CheckpointMismatch):
        fs.load(PACKAGE, RUN, definition_hash=HASH_V2)


def test_save_after_a_fallback_writes_a_readable_latest(
    fs: FilesystemCheckpointStore, fs_warnings: pytest.LogCaptureFixture
) -> None:
    fs.save(make(epoch=1, seq=1))
    fs.save(make(epoch=1, seq=2))
    _damage(latest(fs), "flipped")
    resumed = fs.load(PACKAGE, RUN)
    assert resumed is not None
    fs.save(make(epoch=2, seq=3))
    fs_warnings.clear()
    loaded = fs.load(PACKAGE, RUN)
    assert loaded is not None and loaded.progress == {"transform": 3}
    assert fs_warnings.records == []


def test_a_save_after_a_fallback_keeps_the_good_previous_generation(
    fs: FilesystemCheckpointStore, fs_warnings: pytest.LogCaptureFixture
) -> None:
    fs.save(make(epoch=1, seq=1))
    fs.save(make(epoch=1, seq=2))
    directory = fs.run_dir(PACKAGE, RUN)
    _damage(directory / "snapshot-2.json", "flipped")
    fs.save(make(epoch=1, seq=3))  # must not push the good generation 1 out for the damaged 2
    _damage(directory / "snapshot-3.json", "truncated")
    loaded = fs.load(PACKAGE, RUN)
    assert loaded is not None and loaded.progress == {"transform": 1}


def test_a_run_directory_copied_under_another_id_is_refused(
    fs: FilesystemCheckpointStore, tmp_path: Path
) -> None:
    fs.save(make(epoch=1, seq=1))
    source = fs.run_dir(PACKAGE, RUN)
    target = fs.run_dir(PACKAGE, "copied-run")
    target.mkdir(parents=True)
    (target / "snapshot-1.json").write_bytes((source / "snapshot-1.json").read_bytes())
    with pytest.raises(CheckpointCorrupt, match="belongs to"):
        fs.load(PACKAGE, "copied-run")
