"""Real processes racing on one filesystem checkpoint store.

Each writer is a fresh interpreter (``sys.executable -c``) so the store's
cross-process lock (flock) is what keeps them apart, not a lock they share in
memory. They start together: each touches a ``ready`` file and polls for a
``go`` file that the test creates once every writer is ready.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from checkpoints import Checkpoint, FilesystemCheckpointStore, decode

PACKAGE = "race-etl"
RUN = "run-race"
HIGH_WRITES = 100
LOW_MIN_WRITES = 100
LOW_MIN_FENCED = 20
LOW_HEAD_START = 10
DEADLINE = 60.0

_PRELUDE = r"""
import json, sys, time
from pathlib import Path
from checkpoints import Checkpoint, Fenced, FilesystemCheckpointStore

root, ready, go, out, *args = sys.argv[1:]
store = FilesystemCheckpointStore(root)
Path(ready).touch()
deadline = time.monotonic() + 30
while not Path(go).exists():
    if time.monotonic() > deadline:
        sys.exit("barrier: the go file never appeared")
    time.sleep(0.0005)  # poll; bounded by the deadline above
"""

# Saves with its own epoch; records (seq, start_ns, end_ns, outcome) of every
# attempt on CLOCK_MONOTONIC, which all processes on the host share. The lower
# epoch keeps writing until it was refused often enough, and the higher one
# first waits until the lower one has landed some writes, so the two really
# contend whichever the scheduler happens to run first.
WRITER = (
    _PRELUDE
    + r"""
epoch, min_writes, min_fenced, wait_for_seq = map(int, args)
while wait_for_seq >= 0:
    current = store.load("race-etl", "run-race")
    if current is not None and current.progress["seq"] >= wait_for_seq:
        break
    if time.monotonic() > deadline:
        sys.exit("the other writer never reached seq %d" % wait_for_seq)
    time.sleep(0.0005)  # poll; bounded by the deadline above
log, fenced, seq = [], 0, 0
stop = time.monotonic() + 30
while seq < min_writes or fenced < min_fenced:
    if time.monotonic() > stop:
        break
    checkpoint = Checkpoint(
        package="race-etl", definition_hash="h" * 64, run_id="run-race", epoch=epoch,
        progress={"writer": epoch, "seq": seq}, variables={"pad": "x" * 2000},
    )
    start = time.monotonic_ns()
    try:
        store.save(checkpoint)
        outcome = "ok"
    except Fenced:
        outcome = "fenced"
        fenced += 1
    log.append([seq, start, time.monotonic_ns(), outcome])
    seq += 1
Path(out).write_text(json.dumps(log))
"""
)

CLAIMER = (
    _PRELUDE
    + r"""
(calls,) = map(int, args)
claimed = [store.next_epoch("race-etl", "run-race") for _ in range(calls)]
Path(out).write_text(json.dumps(claimed))
"""
)


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    ready: Path
    out: Path

    def result(self) -> list[Any]:
        stdout, stderr = self.process.communicate(timeout=DEADLINE)
        assert self.process.returncode == 0, f"{self.name} failed:\n{stderr.decode()}"
        data: list[Any] = json.loads(self.out.read_text())
        return data


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Child]]:
    children: list[Child] = []

    def start(script: str, name: str, *args: object) -> Child:
        ready, out = tmp_path / f"ready-{name}", tmp_path / f"out-{name}.json"
        command = [sys.executable, "-c", script, str(tmp_path / "store"), str(ready)]
        command += [str(tmp_path / "go"), str(out), *map(str, args)]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        children.append(Child(name, process, ready, out))
        return children[-1]

    yield start
    for child in children:
        if child.process.poll() is None:
            child.process.kill()
        child.process.communicate(timeout=DEADLINE)


def release(tmp_path: Path, children: list[Child]) -> None:
    """Wait until every child is at the barrier, then let them all go at once."""
    deadline = time.monotonic() + DEADLINE
    while not all(child.ready.exists() for child in children):
        for child in children:
            assert child.process.poll() is None, child.process.communicate()[1].decode()
        assert time.monotonic() < deadline, "children never reached the barrier"
        time.sleep(0.01)  # poll; bounded by the deadline above
    (tmp_path / "go").touch()


def watch(store: FilesystemCheckpointStore, children: list[Child]) -> list[tuple[int, int]]:
    """Load the checkpoint until every child exits; return the (epoch, seq) seen each time."""
    seen: list[tuple[int, int]] = []
    deadline = time.monotonic() + DEADLINE
    while any(child.process.poll() is None for child in children):
        assert time.monotonic() < deadline, "writers did not finish in time"
        checkpoint = store.load(PACKAGE, RUN)  # raises if no generation decodes
        if checkpoint is not None:
            seen.append((checkpoint.epoch, checkpoint.progress["seq"]))
    return seen


def test_two_processes_racing_the_higher_epoch_wins(
    tmp_path: Path, spawn: Callable[..., Child], caplog: pytest.LogCaptureFixture
) -> None:
    low = spawn(WRITER, "low", 1, LOW_MIN_WRITES, LOW_MIN_FENCED, -1)
    high = spawn(WRITER, "high", 2, HIGH_WRITES, 0, LOW_HEAD_START)
    store = FilesystemCheckpointStore(tmp_path / "store")
    with caplog.at_level(logging.WARNING, logger="checkpoints.filesystem"):
        release(tmp_path, [low, high])
        seen = watch(store, [low, high])
    low_log, high_log = low.result(), high.result()

    # The newer attempt is never refused.
    assert [entry[3] for entry in high_log] == ["ok"] * HIGH_WRITES
    high_first_start, high_first_end = high_log[0][1], high_log[0][2]

    # Every write of the older epoch that began after the newer one's first
    # write had landed was refused; none was refused before the newer writer
    # had even started; once refused, always refused.
    outcomes = [entry[3] for entry in low_log]
    assert outcomes.count("ok") > LOW_HEAD_START  # the older writer was live when superseded
    assert outcomes.count("fenced") >= LOW_MIN_FENCED
    for seq, start, end, outcome in low_log:
        if start > high_first_end:
            assert outcome == "fenced", (seq, start, high_first_end)
        if outcome == "fenced":
            assert end > high_first_start, seq
    first_fenced = outcomes.index("fenced")
    assert set(outcomes[first_fenced:]) == {"fenced"}

    # No reader ever saw the older epoch again after the newer one, nor a
    # writer's sequence going backwards, nor a damaged generation.
    assert seen, "the reader never saw a checkpoint"
    assert seen == sorted(seen), "the stored checkpoint went back in time"
    assert caplog.records == []

    # The final state belongs to the newer writer, both generations intact (each save of a
    # whole checkpoint is a generation: a snapshot and its empty journal).
    directory = store.run_dir(PACKAGE, RUN)
    newest = max(int(p.stem.split("-")[1]) for p in directory.glob("snapshot-*.json"))
    latest = decode((directory / f"snapshot-{newest}.json").read_bytes())
    previous = decode((directory / f"snapshot-{newest - 1}.json").read_bytes())
    assert (latest.epoch, latest.progress) == (2, {"writer": 2, "seq": HIGH_WRITES - 1})
    assert (previous.epoch, previous.progress) == (2, {"writer": 2, "seq": HIGH_WRITES - 2})
    assert newest == outcomes.count("ok") + HIGH_WRITES, "one generation per accepted save"
    assert store.epoch(PACKAGE, RUN) == 2
    assert sorted(p.name for p in directory.iterdir()) == [
        ".lock",
        "epoch",
        f"journal-{newest - 1}.log",
        f"journal-{newest}.log",
        f"snapshot-{newest - 1}.json",
        f"snapshot-{newest}.json",
    ]


def test_concurrent_next_epoch_across_processes_never_repeats(
    tmp_path: Path, spawn: Callable[..., Child]
) -> None:
    processes, calls = 8, 25
    children = [spawn(CLAIMER, f"claim{i}", calls) for i in range(processes)]
    release(tmp_path, children)
    results = [child.result() for child in children]
    claimed = [epoch for result in results for epoch in result]
    assert len(claimed) == len(set(claimed)) == processes * calls
    assert sorted(claimed) == list(range(1, processes * calls + 1))
    assert all(result == sorted(result) for result in results)
    store = FilesystemCheckpointStore(tmp_path / "store")
    assert store.epoch(PACKAGE, RUN) == processes * calls
    assert store.load(PACKAGE, RUN) is None


def test_a_fenced_process_cannot_write_after_a_fence_from_another(tmp_path: Path) -> None:
    """``fence`` in one process refuses a writer in another before the new attempt writes."""
    store = FilesystemCheckpointStore(tmp_path / "store")
    store.save(
        Checkpoint(package=PACKAGE, definition_hash="h" * 64, run_id=RUN, epoch=1, progress={"seq": 0})
    )
    store.fence(PACKAGE, RUN, 2)
    directory = store.run_dir(PACKAGE, RUN)
    before = {p.name: p.read_bytes() for p in directory.iterdir()}
    script = r"""
import sys
from checkpoints import Checkpoint, Fenced, FilesystemCheckpointStore
store = FilesystemCheckpointStore(sys.argv[1])
try:
    store.save(Checkpoint(package="race-etl", definition_hash="h" * 64, run_id="run-race",
                          epoch=1, progress={"seq": 1}))
except Fenced as exc:
    print(exc.stored_epoch)
    sys.exit(0)
sys.exit("the stale write was accepted")
"""
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "store")],
        capture_output=True,
        timeout=DEADLINE,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().strip() == "2"
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == before
