"""The writer of checkpoint format 2 (open, append, compact), one contract for every store."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from checkpoints import (
    LEGACY_FORMAT_VERSION,
    Change,
    Checkpoint,
    CheckpointError,
    CheckpointMismatch,
    CheckpointStore,
    CheckpointTooLarge,
    CheckpointWriter,
    Fenced,
    FilesystemCheckpointStore,
    InMemoryCheckpointStore,
    TaskRecord,
    apply,
    encode,
    needs_compaction,
)
from checkpoints.format import canonical_json
from checkpoints.s3 import S3CheckpointStore
from tests.support.seaweed import objects

PACKAGE, RUN = "etl-daily", "run-0001"
HASH = hashlib.sha256(b"definition").hexdigest()


def make(epoch: int = 1, **fields: object) -> Checkpoint:
    return Checkpoint.model_validate(
        {"package": PACKAGE, "definition_hash": HASH, "run_id": RUN, "epoch": epoch, **fields}
    )


@pytest.fixture(params=["memory", "filesystem", "s3", "s3-moto"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> CheckpointStore:
    if request.param == "memory":
        return InMemoryCheckpointStore()
    if request.param.startswith("s3"):
        server = request.getfixturevalue("seaweed" if request.param == "s3" else "moto_s3")
        s3: S3CheckpointStore = server.store()
        return s3
    return FilesystemCheckpointStore(tmp_path / "checkpoints")


def snapshot_of(store: CheckpointStore) -> Callable[[], object]:
    """What the store holds, byte for byte where it can be seen (to show nothing changed)."""
    if isinstance(store, FilesystemCheckpointStore):
        directory = store.run_dir(PACKAGE, RUN)
        return lambda: {p.name: p.read_bytes() for p in directory.iterdir()}
    if isinstance(store, S3CheckpointStore):
        return lambda: objects(store)
    return lambda: (store.load(PACKAGE, RUN), store.epoch(PACKAGE, RUN))


def test_both_writers_satisfy_the_protocol(store: CheckpointStore) -> None:
    writer = store.open(make())
    assert isinstance(writer, CheckpointWriter)
    assert (writer.epoch, writer.generation, writer.journal_bytes) == (1, 1, 0)
    assert writer.snapshot_bytes == len(encode(make()))


def test_appended_records_are_replayed_on_load(store: CheckpointStore) -> None:
    writer = store.open(make(variables={"n": 0}))
    written = writer.append([Change(items={"load": {"eu": {"rows": 3}}}, variables={"n": 3})])
    written += writer.append([Change(progress={"load:us": {"offset": 10}})])
    written += writer.append([Change(tasks={"extract": TaskRecord(state="succeeded", output=[1])})])
    assert writer.journal_bytes == written > 0
    loaded = store.load(PACKAGE, RUN, definition_hash=HASH)
    assert loaded is not None
    assert loaded.items == {"load": {"eu": {"rows": 3}}}
    assert loaded.progress == {"load:us": {"offset": 10}}
    assert loaded.variables == {"n": 3}
    assert loaded.tasks["extract"].output == [1]


def test_several_changes_in_one_append_are_one_write(store: CheckpointStore) -> None:
    writer = store.open(make())
    size = writer.append([Change(items={"t": {str(n): n}}) for n in range(8)])
    assert size == writer.journal_bytes
    loaded = store.load(PACKAGE, RUN)
    assert loaded is not None and loaded.items == {"t": {str(n): n for n in range(8)}}
    assert writer.append([]) == 0


def test_compaction_starts_a_generation_holding_the_same_state(store: CheckpointStore) -> None:
    writer = store.open(make())
    state = make()
    for n in range(3):
        change = Change(items={"t": {str(n): n}})
        writer.append([change])
        apply(state, change)
    size = writer.compact(state)
    assert (writer.generation, writer.snapshot_bytes, writer.journal_bytes) == (2, size, 0)
    writer.append([Change(progress={"u": 1})])
    loaded = store.load(PACKAGE, RUN)
    assert loaded is not None and loaded.items == {"t": {"0": 0, "1": 1, "2": 2}}
    assert loaded.progress == {"u": 1}


def test_the_journal_is_compacted_once_it_outgrows_its_snapshot(store: CheckpointStore) -> None:
    big = make(variables={"pad": "x" * 100_000})
    writer = store.open(big)
    while writer.journal_bytes <= writer.snapshot_bytes:
        assert not needs_compaction(writer)
        writer.append([Change(progress={"t": "y" * 1000})])
    assert needs_compaction(writer)
    small = store.open(make(epoch=2))
    small.append([Change(progress={"t": "y" * 1000})])
    assert not needs_compaction(small), "a journal under the floor is never compacted"


def test_a_fenced_writer_can_neither_append_nor_compact(store: CheckpointStore) -> None:
    writer = store.open(make())
    writer.append([Change(progress={"t": 1})])
    assert store.fence(PACKAGE, RUN, 2) == 2
    held = snapshot_of(store)
    before = held()
    with pytest.raises(Fenced, match="epoch 1 is older than the stored epoch 2"):
        writer.append([Change(progress={"t": 2})])
    with pytest.raises(Fenced):
        writer.compact(make())
    assert held() == before
    loaded = store.load(PACKAGE, RUN)
    assert loaded is not None and loaded.progress == {"t": 1}


def test_opening_with_an_older_epoch_is_fenced(store: CheckpointStore) -> None:
    store.open(make(epoch=3))
    with pytest.raises(Fenced):
        store.open(make(epoch=2))
    assert store.epoch(PACKAGE, RUN) == 3


def test_a_second_writer_of_the_same_epoch_stops_the_first(store: CheckpointStore) -> None:
    first = store.open(make())
    store.open(make(progress={"from": "second"}))
    with pytest.raises(CheckpointError, match="generation"):
        first.append([Change(progress={"from": "first"})])
    loaded = store.load(PACKAGE, RUN)
    assert loaded is not None and loaded.progress == {"from": "second"}


def test_appending_after_the_checkpoint_was_deleted_is_refused(store: CheckpointStore) -> None:
    writer = store.open(make())
    store.delete(PACKAGE, RUN, epoch=1)
    with pytest.raises(CheckpointError, match="deleted"):
        writer.append([Change(progress={"t": 1})])
    assert store.load(PACKAGE, RUN) is None


def test_a_record_over_max_bytes_is_refused_and_nothing_written(store: CheckpointStore) -> None:
    writer = store.open(make())
    store.max_bytes = 200  # type: ignore[attr-defined]
    with pytest.raises(CheckpointTooLarge, match="over the limit of 200"):
        writer.append([Change(progress={"t": "x" * 300})])
    assert writer.journal_bytes == 0
    loaded = store.load(PACKAGE, RUN)
    assert loaded is not None and loaded.progress == {}


def test_save_is_a_whole_generation(store: CheckpointStore) -> None:
    assert store.save(make(progress={"t": 1})) == len(encode(make(progress={"t": 1})))
    loaded = store.load(PACKAGE, RUN)
    assert loaded is not None and loaded.progress == {"t": 1}


# -- format 1, left by the previous version (filesystem) ---------------------------------------------


def format_1(checkpoint: Checkpoint) -> bytes:
    """A checkpoint file as the previous version wrote it (format 1: no journal, no writers)."""
    body_document = checkpoint.model_dump(mode="json", exclude={"writers"})
    body_document["format_version"] = LEGACY_FORMAT_VERSION
    body = canonical_json(body_document)
    digest = hashlib.sha256(body).hexdigest().encode()
    return b'{"format":1,"sha256":"%s","body":' % digest + body + b"}\n"


def test_a_format_1_checkpoint_is_resumed_then_superseded(tmp_path: Path) -> None:
    store = FilesystemCheckpointStore(tmp_path)
    directory = store.run_dir(PACKAGE, RUN)
    directory.mkdir(parents=True)
    old = make(items={"load": {"eu": 1}}, progress={"load:us": 5})
    (directory / "checkpoint.json").write_bytes(format_1(old))
    (directory / "epoch").write_text("1\n")
    loaded = store.load(PACKAGE, RUN, definition_hash=HASH)
    assert loaded is not None and loaded.items == old.items and loaded.progress == old.progress
    assert loaded.format_version == LEGACY_FORMAT_VERSION

    loaded.epoch = 2
    writer = store.open(loaded)  # the resuming attempt's first snapshot is format 2
    assert json.loads((directory / "snapshot-1.json").read_bytes())["format"] == 2
    assert (directory / "checkpoint.json").exists(), "kept as the fallback of generation 1"
    writer.compact(loaded)
    assert sorted(p.name for p in directory.iterdir()) == [
        ".lock",
        "epoch",
        "journal-1.log",
        "journal-2.log",
        "snapshot-1.json",
        "snapshot-2.json",
    ]


def test_a_damaged_first_snapshot_falls_back_to_the_format_1_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = FilesystemCheckpointStore(tmp_path)
    directory = store.run_dir(PACKAGE, RUN)
    directory.mkdir(parents=True)
    (directory / "checkpoint.json").write_bytes(format_1(make(items={"load": {"eu": 1}})))
    writer = store.open(make(epoch=2, items={"load": {"eu": 1}}))
    writer.append([Change(items={"load": {"us": 2}})])
    (directory / "snapshot-1.json").write_bytes(b"{}")
    with caplog.at_level(logging.WARNING, logger="checkpoints.filesystem"):
        loaded = store.load(PACKAGE, RUN)
    assert loaded is not None and loaded.items == {"load": {"eu": 1, "us": 2}}
    assert "using the previous generation" in caplog.text


def test_a_format_1_checkpoint_of_another_definition_is_a_mismatch(tmp_path: Path) -> None:
    store = FilesystemCheckpointStore(tmp_path)
    directory = store.run_dir(PACKAGE, RUN)
    directory.mkdir(parents=True)
    (directory / "checkpoint.json").write_bytes(format_1(make()))
    with pytest.raises(CheckpointMismatch):
        store.load(PACKAGE, RUN, definition_hash="0" * 64)


def test_a_journal_damaged_in_the_middle_is_reported_and_read_up_to_the_damage(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = FilesystemCheckpointStore(tmp_path)
    writer = store.open(make())
    for n in range(3):
        writer.append([Change(items={"t": {str(n): n}})])
    journal = store.run_dir(PACKAGE, RUN) / "journal-1.log"
    lines = journal.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b'"1":1', b'"1":7')  # still JSON: only the checksum tells
    journal.write_bytes(b"".join(lines))
    with caplog.at_level(logging.WARNING, logger="checkpoints.filesystem"):
        loaded = store.load(PACKAGE, RUN)
    assert loaded is not None and loaded.items == {"t": {"0": 0}}
    assert "journal damaged" in caplog.text and "record 2" in caplog.text
