"""Control flow through the real CLI: the example package, and event handlers across a SIGKILL."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

from tests.support import tasks as T
from tests.support.cli import ROOT, run_cli, start_cli, wait_until, write_package

EXAMPLE = ROOT / "examples" / "orders_control_flow.yaml"


def test_the_example_takes_its_failure_branch_and_alerts(tmp_path: Path) -> None:
    done = run_cli("run", str(EXAMPLE), "--var", "fail_load=true", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr  # the failure is handled by a failure constraint
    result = json.loads(done.stdout)
    assert result["tasks"] == {
        "stage": "succeeded",
        "load": "failed",
        "truncate_stage": "succeeded",
        "publish": "skipped",
        "log_end": "succeeded",
    }
    assert result["handlers"] == {"on_error:load:alert": "succeeded", "on_finish:summary": "succeeded"}
    workdir = tmp_path / ".orchestrator" / "control-flow"
    assert not (workdir / "stage.txt").exists(), "the failure branch truncated the stage"
    alerts = [json.loads(line) for line in (workdir / "alerts.jsonl").read_text().splitlines()]
    assert [(a["task"], a["item"], a["attempt"]) for a in alerts] == [("load", None, 1)]
    assert "fail_load is true" in alerts[0]["error"]


def test_the_example_without_a_failure_skips_the_failure_branch(tmp_path: Path) -> None:
    done = run_cli("run", str(EXAMPLE), "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["tasks"]["truncate_stage"] == "skipped" and result["tasks"]["publish"] == "succeeded"
    assert result["handlers"] == {"on_finish:summary": "succeeded"}


def test_validate_shows_constraint_kinds_and_handlers(tmp_path: Path) -> None:
    done = run_cli("validate", str(EXAMPLE), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "truncate_stage: after load (failure)" in done.stdout
    assert "publish: after load (success) when outputs.load.rows > 0" in done.stdout
    assert "on_error: alert" in done.stdout


def handled(log: Path, hold: Path) -> dict[str, Any]:
    """load fails (a failure constraint handles it); on_error runs alert, then truncate, which holds."""
    step = "tests.support.tasks:step"
    handler = "tests.support.tasks:handler"
    return {
        "name": "handled",
        "tasks": [
            {"id": "load", "python": step, "params": {"log": str(log), "fail": True}},
            {
                "id": "cleanup",
                "python": step,
                "params": {"log": str(log)},
                "depends_on": [{"task": "load", "on": "failure"}],
            },
        ],
        "on_error": [
            {"id": "alert", "python": handler, "params": {"log": str(log)}},
            {"id": "truncate", "python": handler, "params": {"log": str(log), "hold": str(hold)}},
        ],
    }


def test_a_node_killed_in_an_event_handler_resumes_it_without_rerunning_finished_ones(tmp_path: Path) -> None:
    log, hold = tmp_path / "log.jsonl", tmp_path / "release"
    package = write_package(tmp_path / "handled.yaml", handled(log, hold))
    process = start_cli("run", str(package), cwd=tmp_path)
    try:
        wait_until(
            lambda: any(e["event"] == "holding" and e["task"] == "truncate" for e in T.read_log(log)),
            timeout=60,
            what="the truncate handler to start holding",
        )
        os.killpg(process.pid, signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
    hold.touch()
    second = run_cli("run", str(package), "--json", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    result = json.loads(second.stdout)
    assert result["state"] == "succeeded" and result["resumed"]
    assert result["handlers"] == {"on_error:load:alert": "succeeded", "on_error:load:truncate": "succeeded"}
    entries = T.read_log(log)
    # the failed-and-handled task and the finished handler do not run again; the one in flight does
    # (cleanup runs beside the handlers: whether it was in flight at the kill is left to chance)
    assert [T.count(entries, "start", t) for t in ("load", "alert", "truncate")] == [1, 1, 2]
    assert T.count(entries, "end", "cleanup") >= 1
    resumed = [e for e in entries if e["task"] == "truncate" and e["event"] == "start"][-1]
    assert resumed["handled"]["task"] == "load" and resumed["handled"]["attempt"] == 1
