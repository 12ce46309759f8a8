"""The engine at ETL scale: long foreach loops and parallel units, each figure against a same-run baseline.

* ``per item, N vs 1,000``: a foreach of N no-op items (100,000; 1,000 in quick
  mode) run by :func:`workers.executor.execute` with a filesystem checkpoint
  store, in a fresh process; its time per item against that of a 1,000-item run
  (100 quick) measured in the same way in the same run. Target <= 1.2: a save
  costs the same at item 100,000 as at item 1.
* ``N items vs fsync loop``: the same N-item run against a plain Python loop
  appending one fsynced record per item to a file (the physical floor of a
  durable per-item record), on the same disk. Target <= 2.
* ``peak RSS``: the N-item run's process (``ru_maxrss``), against the 1,000-item
  run's. Target <= 300 MB.
* ``8 x 1 s in parallel``: eight independent tasks sleeping 1 s (0.2 s quick),
  ``max_concurrency: 8``, against one plain ``time.sleep`` of the same length.
  Target <= 1.3.
* ``1,000 x 10 ms at concurrency 8``: a foreach of 1,000 items (100 quick)
  sleeping 10 ms, ``concurrency: 8``, against the ideal (items x 10 ms / 8);
  a plain thread pool of 8 doing the same sleeps is measured too. Target <= 1.5.

Every run is a child process (``--child``), so each has its own peak RSS and no
state of another. Run: ``python -m bench.foreach [--quick]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    # Run as a file: bench/ comes first on sys.path, and its copy.py would shadow the standard
    # library's copy module; the repository root takes its place.
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import json
import os
import resource
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench import common as C

TARGETS = {"scale": 1.2, "floor": 2.0, "rss_mb": 300.0, "branches": 1.3, "items": 1.5}
RECORD = b'{"crc32":"00000000","record":{"seq":%d,"epoch":1,"items":{"each":{"%d":null}}}}\n'


# -- the child: one measured run ---------------------------------------------------------------------


def child(kind: str, size: int, seconds: float, root: Path) -> dict[str, Any]:
    """Run one measurement in this (fresh) process; return its time and peak RSS."""
    took = fsync_loop(root / "loop.log", size) if kind == "loop" else run_package(kind, size, seconds, root)
    return {"seconds": took, "rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}


def fsync_loop(path: Path, size: int) -> float:
    """The floor: one fsynced record per item, appended to one file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        started = time.perf_counter()
        for n in range(size):
            os.write(fd, RECORD % (n, n))
            os.fsync(fd)
        return time.perf_counter() - started
    finally:
        os.close(fd)


def definition(kind: str, size: int, seconds: float) -> dict[str, Any]:
    if kind == "items":  # a long no-op foreach, one item at a time
        task = {"id": "each", "python": "bench.tasks:noop", "foreach": list(range(size))}
        return {"name": "bench_foreach", "tasks": [task]}
    if kind == "branches":  # independent tasks, all at once
        sleep = {"python": "bench.tasks:sleep", "params": {"seconds": seconds}}
        tasks = [{"id": f"t{n}", **sleep} for n in range(size)]
        return {"name": "bench_branches", "max_concurrency": size, "tasks": tasks}
    task = {
        "id": "each",
        "python": "bench.tasks:sleep",
        "params": {"seconds": seconds},
        "foreach": list(range(size)),
        "concurrency": 8,
    }
    return {"name": "bench_parallel_items", "max_concurrency": 8, "tasks": [task]}


def run_package(kind: str, size: int, seconds: float, root: Path) -> float:
    from checkpoints import FilesystemCheckpointStore
    from orchestrator.packages.validation import parse_package
    from workers.executor import ExecutionOptions, RunRequest, execute

    package = parse_package(definition(kind, size, seconds))
    store = FilesystemCheckpointStore(root / "checkpoints")
    started = time.perf_counter()
    result = execute(RunRequest(package, "bench-run"), ExecutionOptions(store=store))
    took = time.perf_counter() - started
    if not result.succeeded:
        raise RuntimeError(f"{kind} run failed: {result.error}")
    return took


def measure(tmp: Path, kind: str, size: int, seconds: float = 0.0) -> dict[str, Any]:
    """One child process measuring ``kind``; its own directory on the bench's disk."""
    root = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=tmp))
    command = [sys.executable, "-m", "bench.foreach", "--child", kind, str(size), str(seconds), str(root)]
    done = subprocess.run(command, cwd=C.ROOT, capture_output=True, text=True, timeout=7200, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"child {kind} {size} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def thread_pool(items: int, seconds: float) -> float:
    """The same sleeps on a plain pool of 8 threads: what threads alone cost."""
    started = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: time.sleep(seconds), range(items)))
    return time.perf_counter() - started


def plain_sleep(seconds: float) -> float:
    started = time.perf_counter()
    time.sleep(seconds)
    return time.perf_counter() - started


# -- the figures ----------------------------------------------------------------------------------------


def scale(tmp: Path, large: int, small: int, rounds: int) -> dict[str, Any]:
    """Per-item cost at ``large`` against ``small``, the fsync floor, peak RSS; interleaved."""
    runs: dict[str, list[dict[str, Any]]] = {"small": [], "large": [], "loop": []}
    for index in range(rounds):
        order = [("small", "items", small), ("large", "items", large), ("loop", "loop", large)]
        for name, kind, size in order[index % 3 :] + order[: index % 3]:  # rotate: no fixed position
            runs[name].append(measure(tmp, kind, size))
    seconds = {name: C.percentile([r["seconds"] for r in found], 50) for name, found in runs.items()}
    per_item = {"small": seconds["small"] / small * 1e6, "large": seconds["large"] / large * 1e6}
    rss = {name: max(r["rss_kb"] for r in found) / 1024 for name, found in runs.items()}
    return {
        "sizes": {"small": small, "large": large},
        "rounds": rounds,
        "samples": runs,
        "per_item_us": per_item,
        "seconds": seconds,
        "scale_ratio": C.ratio(per_item["large"], per_item["small"]),
        "floor_ratio": C.ratio(seconds["large"], seconds["loop"]),
        "rss_mb": rss,
        "rss_ratio": C.ratio(rss["large"], rss["small"]),
    }


def parallel(tmp: Path, branch_seconds: float, items: int, rounds: int) -> dict[str, Any]:
    samples: dict[str, list[float]] = {"branches": [], "sleep": [], "items": [], "pool": []}
    for _ in range(rounds):
        samples["sleep"].append(plain_sleep(branch_seconds))
        samples["branches"].append(measure(tmp, "branches", 8, branch_seconds)["seconds"])
        samples["pool"].append(thread_pool(items, 0.01))
        samples["items"].append(measure(tmp, "parallel_items", items, 0.01)["seconds"])
    median = {name: C.percentile(values, 50) for name, values in samples.items()}
    ideal = items * 0.01 / 8
    return {
        "samples": samples,
        "median": median,
        "branch_seconds": branch_seconds,
        "items": items,
        "ideal_items_seconds": ideal,
        "branches_ratio": C.ratio(median["branches"], median["sleep"]),
        "items_ratio": C.ratio(median["items"], ideal),
        "items_vs_pool": C.ratio(median["items"], median["pool"]),
    }


def verdict(ratio: float, target: float) -> str:
    return f"{'met' if ratio <= target else 'NOT met'} (<= {target:g})"


def rows(scaled: dict[str, Any], par: dict[str, Any]) -> list[list[Any]]:
    small, large = scaled["sizes"]["small"], scaled["sizes"]["large"]
    seconds, per_item, rss = scaled["seconds"], scaled["per_item_us"], scaled["rss_mb"]
    return [
        [
            f"per item, {large:,} no-op items",
            f"{per_item['large']:.0f} us",
            f"{small:,} items: {per_item['small']:.0f} us",
            scaled["scale_ratio"],
            verdict(scaled["scale_ratio"], TARGETS["scale"]),
        ],
        [
            f"{large:,} items, whole run",
            f"{seconds['large']:.2f} s",
            f"fsync loop: {seconds['loop']:.2f} s",
            scaled["floor_ratio"],
            verdict(scaled["floor_ratio"], TARGETS["floor"]),
        ],
        [
            f"peak RSS, {large:,} items",
            f"{rss['large']:.0f} MB",
            f"{small:,} items: {rss['small']:.0f} MB",
            scaled["rss_ratio"],
            f"{'met' if rss['large'] <= TARGETS['rss_mb'] else 'NOT met'} (<= {TARGETS['rss_mb']:g} MB)",
        ],
        [
            f"8 x {par['branch_seconds']:g} s sleeps, max_concurrency 8",
            f"{par['median']['branches']:.2f} s",
            f"one sleep: {par['median']['sleep']:.2f} s",
            par["branches_ratio"],
            verdict(par["branches_ratio"], TARGETS["branches"]),
        ],
        [
            f"{par['items']:,} x 10 ms items, concurrency 8",
            f"{par['median']['items']:.2f} s",
            f"ideal {par['ideal_items_seconds']:.2f} s (8 threads: {par['median']['pool']:.2f} s)",
            par["items_ratio"],
            verdict(par["items_ratio"], TARGETS["items"]),
        ],
    ]


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, size, seconds, root = sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), Path(sys.argv[5])
        print(json.dumps(child(kind, size, seconds, root)))
        return 0
    args = C.parser(__doc__.splitlines()[0]).parse_args()
    large, small, rounds = (1_000, 100, 1) if args.quick else (100_000, 1_000, 3)
    with C.environment(args) as env:
        scaled = scale(env.tmp, large, small, rounds)
        par = parallel(env.tmp, 0.2 if args.quick else 1.0, 100 if args.quick else 1_000, rounds)
    headers = ["figure", "measured", "baseline, same run", "ratio", "target"]
    title = f"foreach and parallel units ({rounds} rounds, medians{', QUICK mode' if args.quick else ''})"
    print(C.table(title, headers, rows(scaled, par)))
    C.write_result(args, "foreach", {"scale": scaled, "parallel": par, "targets": TARGETS})
    return 0


if __name__ == "__main__":
    sys.exit(main())
