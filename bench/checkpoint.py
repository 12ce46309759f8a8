"""Checkpoint write latency against bare fsynced writes of the same bytes on the same disk.

Snapshots: for a 2 KB and a 200 KB checkpoint, interleaved run by run (A B, then B A):

* ``store.save``: :meth:`FilesystemCheckpointStore.save`, a whole checkpoint as a new
  generation (encode with checksum, flock, epoch check, temp file + fsync, rename,
  its empty journal, fsync of the directory): what an attempt writes when it starts
  and when it compacts;
* ``bare``: the same encoded bytes written the way any careful program writes a file
  atomically: temp file, write, fsync, rename, fsync of the directory.

Journal appends (format 2): a save that adds one finished foreach item to a run
whose checkpoint is 200 KB, as the executor makes it (encode the record with its
checksum, flock, epoch and generation checks, append, fsync; compaction when due),
against a bare append of the same record bytes to an open file plus fsync. Target:
at most 1.5 times.

Run: ``python -m bench.checkpoint [--quick]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    # Run as a file: bench/ comes first on sys.path, and its copy.py would shadow the standard
    # library's copy module; the repository root takes its place.
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import os
import time
from typing import Any

from bench import common as C
from checkpoints import (
    Change,
    Checkpoint,
    FilesystemCheckpointStore,
    TaskRecord,
    apply,
    encode,
    filesystem,
    needs_compaction,
)
from checkpoints.journal import encode_record

TARGET = 1.5
SIZES = {"2 KB": 2 * 1024, "200 KB": 200 * 1024}


def make_checkpoint(size: int) -> Checkpoint:
    """A checkpoint shaped like a real one (tasks with outputs, variables) of about ``size`` bytes."""
    checkpoint = Checkpoint(
        package="bench_checkpoint",
        definition_hash="0" * 64,
        run_id="bench_checkpoint-000000000001",
        epoch=1,
        variables={"batch_date": "2026-11-24", "rows_loaded": 0, "source": "orders.csv"},
    )
    empty = len(encode(checkpoint))
    n = 0
    while True:
        n += 1
        rows = [{"id": n * 100 + i, "region": "eu", "amount": 12.5 + i, "ok": True} for i in range(4)]
        checkpoint.tasks[f"task_{n:04d}"] = TaskRecord(
            state="succeeded", output={"rows": len(rows), "sample": rows}
        )
        checkpoint.progress[f"task_{n:04d}"] = {"offset": n * 7200}
        if n == 1:
            per_task = len(encode(checkpoint)) - empty
        if empty + n * per_task >= size:
            return checkpoint


def bare_write(directory: Path, data: bytes) -> None:
    """The baseline: temp file, write, fsync, rename over the target, fsync of the directory."""
    temp = directory / ".data.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, directory / "data.json")
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def measure(tmp: Path, label: str, size: int, runs: int) -> dict[str, Any]:
    checkpoint = make_checkpoint(size)
    data = encode(checkpoint)
    base = tmp / label.replace(" ", "")
    store = FilesystemCheckpointStore(base / "store")
    bare_dir = base / "bare"
    bare_dir.mkdir(parents=True)
    samples: dict[str, list[float]] = {"save": [], "write": [], "bare": [], "encode": []}

    def write_only() -> None:
        # The store's write path without the encoding: its module-level encode() returns the bytes.
        filesystem.encode = lambda _checkpoint: data
        try:
            store.save(checkpoint)
        finally:
            filesystem.encode = encode

    calls = {
        "save": lambda: store.save(checkpoint),
        "write": write_only,
        "bare": lambda: bare_write(bare_dir, data),
        "encode": lambda: encode(checkpoint),
    }
    for _ in range(max(5, runs // 20)):  # warm-up: files, directory entries, caches
        for call in calls.values():
            call()
    order = list(calls)
    for i in range(runs):
        for name in order[i % len(order) :] + order[: i % len(order)]:  # rotate: no fixed position
            started = time.perf_counter()
            calls[name]()
            samples[name].append((time.perf_counter() - started) * 1000)
    stats = {name: C.summary(values) for name, values in samples.items()}
    save_ratio = C.ratio(stats["save"]["p50"], stats["bare"]["p50"])
    write_ratio = C.ratio(stats["write"]["p50"], stats["bare"]["p50"])
    return {
        "size": label,
        "bytes": len(data),
        "runs": runs,
        **{f"{name}_ms": value for name, value in stats.items()},
        "ratio_p50": save_ratio,
        "ratio_p99": C.ratio(stats["save"]["p99"], stats["bare"]["p99"]),
        "write_ratio_p50": write_ratio,
        "write_ratio_p99": C.ratio(stats["write"]["p99"], stats["bare"]["p99"]),
        "target": TARGET,
        "met": save_ratio <= TARGET,
    }


def measure_append(tmp: Path, runs: int) -> dict[str, Any]:
    """One finished item appended to a 200 KB run, against a bare fsynced append of its bytes."""
    state = make_checkpoint(SIZES["200 KB"])
    store = FilesystemCheckpointStore(tmp / "append" / "store")
    writer = store.open(state)
    bare_path = tmp / "append" / "bare.log"
    fd = os.open(bare_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    samples: dict[str, list[float]] = {"save": [], "bare": []}
    compactions = 0
    try:
        for n in range(runs + max(5, runs // 20)):
            change = Change(items={"load": {f"item-{n:07d}": None}})
            data = encode_record(change, seq=n + 1, epoch=1)
            calls = [("save", lambda c=change: writer.append([c])), ("bare", lambda d=data: _append(fd, d))]
            for name, call in calls if n % 2 else reversed(calls):
                started = time.perf_counter()
                call()
                if name == "save":
                    apply(state, change)
                    if needs_compaction(writer):  # the executor compacts here, within the save
                        writer.compact(state)
                        compactions += 1
                if n >= max(5, runs // 20):  # after the warm-up
                    samples[name].append((time.perf_counter() - started) * 1000)
    finally:
        os.close(fd)
        writer.close()
    stats = {name: C.summary(values) for name, values in samples.items()}
    means = {name: sum(values) / len(values) for name, values in samples.items()}
    return {
        "checkpoint_bytes": len(encode(state)),
        "record_bytes": len(encode_record(Change(items={"load": {"item-0000000": None}}), seq=1, epoch=1)),
        "runs": runs,
        "compactions": compactions,
        **{f"{name}_ms": value for name, value in stats.items()},
        "mean_ms": means,
        "ratio_p50": C.ratio(stats["save"]["p50"], stats["bare"]["p50"]),
        "ratio_p99": C.ratio(stats["save"]["p99"], stats["bare"]["p99"]),
        "ratio_mean": C.ratio(means["save"], means["bare"]),
        "target": TARGET,
        "met": C.ratio(stats["save"]["p50"], stats["bare"]["p50"]) <= TARGET,
    }


def _append(fd: int, data: bytes) -> None:
    os.write(fd, data)
    os.fsync(fd)


def main() -> int:
    args = C.parser(__doc__.splitlines()[0]).parse_args()
    runs = 30 if args.quick else 600
    with C.environment(args) as env:
        results = [measure(env.tmp, label, size, runs) for label, size in SIZES.items()]
        appended = measure_append(env.tmp, 300 if args.quick else 3000)
    rows = []
    for r in results:
        for what, key, ratio_key in (
            ("save (encode + write)", "save", "ratio"),
            ("write only", "write", "write_ratio"),
        ):
            ratio_p50 = r[f"{ratio_key}_p50"]
            rows.append(
                [
                    r["size"],
                    r["bytes"],
                    what,
                    r[f"{key}_ms"]["p50"],
                    r[f"{key}_ms"]["p99"],
                    r["bare_ms"]["p50"],
                    r["bare_ms"]["p99"],
                    ratio_p50,
                    r[f"{ratio_key}_p99"],
                    f"{'met' if ratio_p50 <= TARGET else 'NOT met'} (<= {TARGET})",
                ]
            )
    headers = [
        "checkpoint",
        "bytes",
        "measured",
        "p50 ms",
        "p99 ms",
        "bare p50 ms",
        "bare p99 ms",
        "ratio p50",
        "ratio p99",
        "target",
    ]
    print(
        C.table(
            "checkpoint write vs a bare atomic fsync write of the same bytes "
            f"({results[0]['runs']} runs each, "
            "interleaved; encode p50: "
            + ", ".join(f"{r['size']} {r['encode_ms']['p50']:.2f} ms" for r in results)
            + ")",
            headers,
            rows,
        )
    )
    print(
        C.table(
            f"one finished item saved into a {appended['checkpoint_bytes'] // 1024} KB run (journal append, "
            f"{appended['record_bytes']} bytes) vs a bare fsynced append of the same bytes "
            f"({appended['runs']} runs, interleaved; {appended['compactions']} compaction(s) included)",
            [
                "measured",
                "p50 ms",
                "p99 ms",
                "mean ms",
                "bare p50 ms",
                "bare p99 ms",
                "ratio p50",
                "ratio mean",
                "target",
            ],
            [
                [
                    "save (record + append + fsync)",
                    appended["save_ms"]["p50"],
                    appended["save_ms"]["p99"],
                    appended["mean_ms"]["save"],
                    appended["bare_ms"]["p50"],
                    appended["bare_ms"]["p99"],
                    appended["ratio_p50"],
                    appended["ratio_mean"],
                    f"{'met' if appended['met'] else 'NOT met'} (<= {TARGET})",
                ]
            ],
        )
    )
    C.write_result(args, "checkpoint", {"results": results, "append": appended, "target_ratio": TARGET})
    return 0


if __name__ == "__main__":
    sys.exit(main())
