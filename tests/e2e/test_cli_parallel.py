"""A parallel ``orchestrator run`` SIGKILLed mid-run: no acknowledged item runs again.

The run is a real process (its whole process group is killed). What its
checkpoint holds after the kill is what was acknowledged; the rerun of the same
command must start none of those items, resume every item in flight from its
last ``ctx.progress.save`` and finish the rest.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

from checkpoints import FilesystemCheckpointStore
from tests.support import tasks as T
from tests.support.cli import run_cli, start_cli, wait_until, write_package

ITEMS, UNITS, CONCURRENCY = 48, 4, 8


def parallel(log: Path) -> dict[str, Any]:
    """prep -> load (48 items, 8 at once, each 4 paced units saving progress) -> report."""
    step = {"python": "tests.support.tasks:step", "params": {"log": str(log)}}
    load = {
        "id": "load",
        "python": "tests.support.tasks:units",
        "params": {"log": str(log), "units": UNITS, "pace": 0.05},
        "foreach": [f"f{n:02d}" for n in range(ITEMS)],
        "concurrency": CONCURRENCY,
        "depends_on": ["prep"],
    }
    return {
        "name": "par",
        "max_concurrency": CONCURRENCY,
        "tasks": [{"id": "prep", **step}, load, {"id": "report", "depends_on": ["load"], **step}],
    }


def mid_run(log: Path, store: FilesystemCheckpointStore) -> bool:
    """At least 12 items acknowledged in the checkpoint (an item's end in the log comes before
    its acknowledgement), and at least 4 others that saved progress and have not ended."""
    entries = [e for e in T.read_log(log) if e["task"] == "load"]
    ended = {e["item"] for e in entries if e["event"] == "end"}
    saving = {e["item"] for e in entries if e["event"] == "saved"} - ended
    if len(saving) < 4:
        return False
    kept = store.load("par", "local")
    return kept is not None and len(kept.items.get("load", ())) >= 12


def test_sigkill_at_concurrency_8_repeats_no_acknowledged_item(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    package = write_package(tmp_path / "par.yaml", parallel(log))
    store = FilesystemCheckpointStore(tmp_path / ".orchestrator/checkpoints")
    process = start_cli("run", str(package), "--quiet", cwd=tmp_path)
    try:
        wait_until(lambda: mid_run(log, store), timeout=90, what="items acknowledged and others mid-progress")
        os.killpg(process.pid, signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()

    kept = store.load("par", "local")
    assert kept is not None and set(kept.tasks) == {"prep"}
    acknowledged = set(kept.items["load"])
    progress = {key.split(":", 1)[1]: value["done"] for key, value in kept.progress.items()}
    first = [e for e in T.read_log(log) if e["task"] == "load"]
    started = {e["item"] for e in first if e["event"] == "start"}
    assert len(acknowledged) >= 12 and progress, (acknowledged, progress)
    assert len(started - acknowledged) <= CONCURRENCY, "more items in flight than the concurrency"

    resumed = run_cli("run", str(package), "--json", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["skipped"] == ["prep"]
    entries = T.read_log(log)
    second = [e for e in entries if e["task"] == "load" and e["epoch"] == 2]
    restarted = {e["item"] for e in second if e["event"] == "start"}
    items = {f"f{n:02d}" for n in range(ITEMS)}
    assert not restarted & acknowledged, "an acknowledged item ran again"
    assert restarted == items - acknowledged, "every other item ran once more"
    for item, saved in progress.items():
        redone = [e["unit"] for e in second if e["item"] == item and e["event"] == "unit"]
        assert redone == list(range(saved, UNITS)), f"{item} did not resume from its saved progress {saved}"
    ends = [e["item"] for e in entries if e["task"] == "load" and e["event"] == "end"]
    assert set(ends) == items
    assert [e["event"] for e in entries if e["task"] == "prep"] == ["start", "end"], "prep ran once"
