"""The journal of checkpoint format 2: records, torn tails, compactions and fencing, against a model.

The property test drives a filesystem store the way attempts do (open a
generation, append changes, compact, a new attempt taking over) and after
every step compares what the store loads with a plain model of the state.
A crash is a journal cut at any byte offset of its last append; a fenced
writer lives in another process (flock is per process, so only a second
process shows that the store, not a lock shared in memory, refuses it).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from checkpoints import (
    Change,
    Checkpoint,
    CheckpointError,
    Fenced,
    FilesystemCheckpointStore,
    TaskRecord,
    apply,
    read_journal,
)
from checkpoints.journal import encode_record

PACKAGE, RUN = "journal-pkg", "run-1"
ROOT = Path(__file__).resolve().parents[2]


def base(epoch: int = 1) -> Checkpoint:
    return Checkpoint(package=PACKAGE, definition_hash="d" * 64, run_id=RUN, epoch=epoch)


def state(checkpoint: Checkpoint | None) -> dict[str, Any]:
    """What a resumed attempt uses: everything but timestamps and the attempt counter."""
    assert checkpoint is not None
    return checkpoint.model_dump(mode="json", include={"tasks", "items", "progress", "variables", "writers"})


# -- records ---------------------------------------------------------------------------------------


def test_a_record_is_one_checksummed_json_line() -> None:
    change = Change(items={"load": {"eu": {"rows": 3}}}, variables={"n": 3}, writers={"n": "load[eu]"})
    line = encode_record(change, seq=1, epoch=4)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    document = json.loads(line)
    assert list(document) == ["crc32", "record"]
    assert document["record"] == {
        "seq": 1,
        "epoch": 4,
        "items": {"load": {"eu": {"rows": 3}}},
        "variables": {"n": 3},
        "writers": {"n": "load[eu]"},
    }
    (record,) = read_journal(line).records
    assert (record.seq, record.epoch, record.change) == (1, 4, change)


def test_every_cut_of_a_journal_keeps_exactly_the_whole_records() -> None:
    changes = [Change(progress={"t": n}) for n in range(4)]
    lines = [encode_record(c, seq=n + 1, epoch=1) for n, c in enumerate(changes)]
    data = b"".join(lines)
    ends = [sum(len(line) for line in lines[: n + 1]) for n in range(len(lines))]
    for cut in range(len(data) + 1):
        journal = read_journal(data[:cut])
        whole = sum(end <= cut for end in ends)
        assert [r.change for r in journal.records] == changes[:whole], cut
        assert journal.damage is None and journal.torn == (cut not in (0, *ends)), cut


def test_a_damaged_record_with_records_after_it_is_damage_not_a_torn_tail() -> None:
    lines = [encode_record(Change(progress={"t": n}), seq=n + 1, epoch=1) for n in range(3)]
    damaged = bytearray(b"".join(lines))
    value = len(lines[0]) + lines[1].index(b'"t":1') + 4
    damaged[value] ^= 0x01  # "t":1 becomes "t":0: still JSON, only the checksum tells
    journal = read_journal(bytes(damaged), source="j.log")
    assert len(journal.records) == 1 and not journal.torn
    assert journal.damage is not None
    assert "record 2" in journal.damage and "1 readable record(s) after it are ignored" in journal.damage


def test_records_out_of_sequence_are_not_read() -> None:
    first = encode_record(Change(progress={"t": 1}), seq=1, epoch=1)
    third = encode_record(Change(progress={"t": 3}), seq=3, epoch=1)
    assert len(read_journal(first + third).records) == 1


def test_applying_a_task_record_drops_its_items_and_progress() -> None:
    checkpoint = base()
    apply(checkpoint, Change(items={"t": {"a": 1}}, progress={"t:b": 5, "t": 1, "u": 2}))
    assert checkpoint.items == {"t": {"a": 1}} and checkpoint.progress == {"t:b": 5, "t": 1, "u": 2}
    apply(checkpoint, Change(items={"t": {"b": 2}}))
    assert checkpoint.progress == {"t": 1, "u": 2}
    apply(checkpoint, Change(tasks={"t": TaskRecord(state="succeeded", output={"a": 1, "b": 2})}))
    assert checkpoint.items == {} and checkpoint.progress == {"u": 2}


def test_a_record_that_is_not_json_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    store = FilesystemCheckpointStore(tmp_path)
    writer = store.open(base())
    with pytest.raises(CheckpointError, match="not JSON-serialisable"):
        writer.append([Change(progress={"t": object()})])
    with pytest.raises(CheckpointError, match="not JSON-serialisable"):
        writer.append([Change(variables={"v": "bad \udcff"})])
    assert (store.run_dir(PACKAGE, RUN) / "journal-1.log").read_bytes() == b""
    writer.append([Change(progress={"t": 1})])  # the writer still works
    assert state(store.load(PACKAGE, RUN))["progress"] == {"t": 1}


# -- a stale writer in another process ----------------------------------------------------------

_STALE_WRITER = r"""
import json, sys
from checkpoints import Change, Fenced, FilesystemCheckpointStore
writers = {}
for line in sys.stdin:
    command = json.loads(line)
    store = FilesystemCheckpointStore(command["root"])
    try:
        if command["do"] == "open":
            checkpoint = store.load(command["package"], command["run"])
            checkpoint.epoch = command["epoch"]
            writers[command["root"]] = store.open(checkpoint)
            answer = "opened"
        elif command["do"] == "append":
            writers[command["root"]].append([Change(progress={"stale": command["epoch"]})])
            answer = "appended"
        else:
            checkpoint = store.load(command["package"], command["run"])
            checkpoint.epoch = command["epoch"]
            writers[command["root"]].compact(checkpoint)
            answer = "compacted"
    except Fenced as exc:
        answer = "fenced %d" % exc.stored_epoch
    print(answer, flush=True)
"""


@dataclass
class StaleWriter:
    """A process holding a writer of an older epoch; it answers each command with one line."""

    process: subprocess.Popen[str]

    def ask(self, **command: Any) -> str:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline().strip()
        assert answer, "the stale writer process died"
        return answer


@pytest.fixture(scope="module")
def stale_writer() -> Iterator[StaleWriter]:
    process = subprocess.Popen(
        [sys.executable, "-c", _STALE_WRITER],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    yield StaleWriter(process)
    assert process.stdin is not None and process.stdout is not None
    process.stdin.close()
    process.wait(timeout=30)
    process.stdout.close()


# -- the property ---------------------------------------------------------------------------------

_KEYS = st.sampled_from(["a", "b", "c"])
_VALUES = st.one_of(
    st.none(), st.integers(-5, 5), st.text(max_size=6), st.lists(st.integers(0, 3), max_size=3)
)
_CHANGES = st.builds(
    Change,
    tasks=st.dictionaries(
        _KEYS, st.builds(TaskRecord, state=st.just("succeeded"), output=_VALUES), max_size=1
    ),
    items=st.dictionaries(_KEYS, st.dictionaries(_KEYS, _VALUES, max_size=2), max_size=1),
    progress=st.dictionaries(st.sampled_from(["a", "b", "a:a", "b:c"]), _VALUES, max_size=2),
    variables=st.dictionaries(st.sampled_from(["x", "y"]), _VALUES, max_size=2),
)
_STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.lists(_CHANGES, min_size=1, max_size=3)),
        st.tuples(st.just("compact"), st.none()),
        st.tuples(st.just("takeover"), st.none()),
        st.tuples(st.just("stale"), st.none()),
        st.tuples(st.just("crash"), st.floats(0, 1)),
    ),
    max_size=14,
)


@dataclass
class Model:
    """The state every acknowledged record applied to, kept apart from the store, and the writer."""

    store: FilesystemCheckpointStore
    checkpoint: Checkpoint = field(default_factory=base)
    before_last: Checkpoint | None = None  # the state before the last append, and that append
    last: tuple[list[Change], int] = ([], 0)

    def __post_init__(self) -> None:
        self.writer = self.store.open(self.checkpoint)

    @property
    def journal(self) -> Path:
        return self.store.run_dir(PACKAGE, RUN) / f"journal-{self.writer.generation}.log"

    def append(self, changes: list[Change]) -> None:
        self.before_last = self.checkpoint.model_copy(deep=True)
        self.last = (changes, self.writer.journal_bytes)
        self.writer.append(changes)
        for change in changes:
            apply(self.checkpoint, change)

    def compact(self) -> None:
        self.writer.compact(self.checkpoint)
        self.before_last = None

    def takeover(self) -> None:
        """A new attempt: fence (the old writer is refused from then on), open a new generation."""
        old = self.writer
        self.store.fence(PACKAGE, RUN, old.epoch + 1)
        with pytest.raises(Fenced):
            old.append([Change(progress={"zombie": 1})])
        with pytest.raises(Fenced):
            old.compact(self.checkpoint)
        old.close()
        assert state(self.store.load(PACKAGE, RUN)) == state(self.checkpoint)
        self.checkpoint = self.checkpoint.model_copy(deep=True)
        self.checkpoint.epoch = old.epoch + 1
        self.writer = self.store.open(self.checkpoint)
        self.before_last = None

    def crash(self, where: float) -> None:
        """Power lost in the middle of the last append: its bytes are cut at any offset.

        The model keeps what was acknowledged before that append, plus the records of
        the append that were written whole.
        """
        if self.before_last is None:
            return
        changes, start = self.last
        data = self.journal.read_bytes()
        cut = start + round(where * (len(data) - start - 1))  # at least its last byte is lost
        self.journal.write_bytes(data[:cut])
        lines = data[start:].splitlines(keepends=True)
        whole = sum(1 for n in range(len(lines)) if start + sum(map(len, lines[: n + 1])) <= cut)
        self.checkpoint = self.before_last
        for change in changes[:whole]:
            apply(self.checkpoint, change)
        assert state(self.store.load(PACKAGE, RUN)) == state(self.checkpoint), "torn tail dropped"
        self.takeover()


@settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=_STEPS)
def test_the_store_loads_what_the_model_says(
    tmp_path_factory: pytest.TempPathFactory, stale_writer: StaleWriter, steps: list[tuple[str, Any]]
) -> None:
    root = tmp_path_factory.mktemp("journal")
    store = FilesystemCheckpointStore(root)
    model = Model(store)
    for step, argument in steps:
        if step == "append":
            model.append(argument)
        elif step == "compact":
            model.compact()
        elif step == "takeover":
            model.takeover()
        elif step == "crash":
            model.crash(argument)
        else:  # a writer of the current epoch in another process; a fence; it is refused
            epoch, directory = model.writer.epoch, store.run_dir(PACKAGE, RUN)
            command = {"root": str(root), "package": PACKAGE, "run": RUN, "epoch": epoch}
            assert stale_writer.ask(do="open", **command) == "opened"
            model.writer.close()
            model.writer = store.open(model.checkpoint)  # the stale writer began a generation: start anew
            model.before_last = None
            model.takeover()
            files = {p.name: p.read_bytes() for p in directory.iterdir()}
            assert stale_writer.ask(do="append", **command) == f"fenced {epoch + 1}"
            assert stale_writer.ask(do="compact", **command) == f"fenced {epoch + 1}"
            assert {p.name: p.read_bytes() for p in directory.iterdir()} == files, "nothing written"
        assert state(store.load(PACKAGE, RUN)) == state(model.checkpoint), (step, argument)


def test_a_crash_in_the_middle_of_an_append_keeps_every_acknowledged_record(tmp_path: Path) -> None:
    """The deterministic core of the property: cut the last append at each of its bytes."""
    store = FilesystemCheckpointStore(tmp_path)
    writer = store.open(base())
    acknowledged = [Change(items={"t": {str(n): n}}) for n in range(5)]
    for change in acknowledged:
        writer.append([change])
    journal = store.run_dir(PACKAGE, RUN) / "journal-1.log"
    kept = journal.read_bytes()
    torn = [Change(items={"t": {"x": 1}}), Change(items={"t": {"y": 2}})]
    writer.append(torn)
    data = journal.read_bytes()
    first_torn_end = len(kept) + len(encode_record(torn[0], seq=6, epoch=1))
    for cut in range(len(kept), len(data)):
        journal.write_bytes(data[:cut])
        loaded = store.load(PACKAGE, RUN)
        assert loaded is not None
        expected = {str(n): n for n in range(5)} | ({"x": 1} if cut >= first_torn_end else {})
        assert loaded.items == {"t": expected}, cut


def test_a_damaged_snapshot_falls_back_and_replays_the_newer_journal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = FilesystemCheckpointStore(tmp_path)
    writer = store.open(base())
    writer.append([Change(items={"t": {"a": 1}})])
    model = base()
    apply(model, Change(items={"t": {"a": 1}}))
    writer.compact(model)
    writer.append([Change(items={"t": {"b": 2}}), Change(progress={"u": 7})])
    snapshot = store.run_dir(PACKAGE, RUN) / "snapshot-2.json"
    damaged = bytearray(snapshot.read_bytes())
    damaged[len(damaged) // 2] ^= 0x10
    snapshot.write_bytes(bytes(damaged))
    with caplog.at_level(logging.WARNING, logger="checkpoints.filesystem"):
        loaded = store.load(PACKAGE, RUN)
    assert loaded is not None
    assert loaded.items == {"t": {"a": 1, "b": 2}} and loaded.progress == {"u": 7}  # nothing lost
    assert "using the previous generation" in caplog.text and str(snapshot) in caplog.text
