"""Checkpoint write latency against a bare atomic fsync write of the same bytes on the same disk.

For a 2 KB and a 200 KB checkpoint, interleaved run by run (A B, then B A):

* ``store.save``: :meth:`FilesystemCheckpointStore.save` as the executor calls it
  (encode with checksum, flock, epoch check, temp file + fsync, keep the previous
  generation, rename, fsync of the directory);
* ``bare``: the same encoded bytes written the way any careful program writes a file
  atomically: temp file, write, fsync, rename, fsync of the directory.

Run: ``python -m bench.checkpoint [--quick]``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common as C
from checkpoints import Checkpoint, FilesystemCheckpointStore, TaskRecord, encode, filesystem

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


def main() -> int:
    args = C.parser(__doc__.splitlines()[0]).parse_args()
    runs = 30 if args.quick else 600
    with C.environment(args) as env:
        results = [measure(env.tmp, label, size, runs) for label, size in SIZES.items()]
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
    C.write_result(args, "checkpoint", {"results": results, "target_ratio": TARGET})
    return 0


if __name__ == "__main__":
    sys.exit(main())
