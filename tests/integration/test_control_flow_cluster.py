"""Event handlers across node loss with real worker processes: a node SIGKILLed after an on_error
handler ran (and while the next one runs) resumes on another node without re-running the first."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from orchestrator.packages.model import Package
from orchestrator.packages.validation import parse_package
from orchestrator.state.states import RunState
from tests.support import tasks as T
from tests.support.cli import run_cli, wait_until
from tests.support.cluster import Cluster

pytestmark = pytest.mark.timeout(180)


def handled_failure(hold: Path) -> Package:
    """load fails, a failure constraint handles it; on_error runs alert, then notify (which holds)."""
    step, handler = "tests.support.tasks:step", "tests.support.tasks:handler"
    return parse_package(
        {
            "name": "handled",
            "tasks": [
                {"id": "load", "python": step, "params": {"fail": True}},
                {"id": "cleanup", "python": step, "depends_on": [{"task": "load", "on": "failure"}]},
                {"id": "report", "python": step, "depends_on": ["load"]},
            ],
            "on_error": [
                {"id": "alert", "python": handler},
                {"id": "notify", "python": handler, "params": {"hold": str(hold)}},
            ],
        }
    )


def holding(cluster: Cluster) -> bool:
    return any(e["event"] == "holding" and e["task"] == "notify" for e in cluster.entries())


def finished(cluster: Cluster, run_id: str) -> dict[str, Any]:
    def state() -> dict[str, Any] | None:
        status = cluster.client.status(run_id)
        return status if RunState(status["state"]).finished else None

    return wait_until(state, timeout=60, what=f"run {run_id} to finish\n{cluster.tail()}")


def test_a_node_killed_after_a_handler_ran_resumes_elsewhere_without_rerunning_it(cluster: Cluster) -> None:
    cluster.start_scheduler("scheduler-1")
    for name in ("node-1", "node-2"):
        cluster.start_node(name)
    cluster.wait_nodes("node-1", "node-2")
    hold = cluster.tmp / "release"
    run_id = cluster.client.submit(handled_failure(hold))
    wait_until(lambda: holding(cluster), timeout=60, what=f"notify to hold\n{cluster.tail()}")
    victim = cluster.client.status(run_id)["node"]
    cluster.kill(victim)
    hold.touch()
    final = finished(cluster, run_id)
    assert final["state"] == "succeeded", final
    assert final["node"] != victim and final["attempt"] == 2
    assert final["tasks"] == {"load": "failed", "cleanup": "succeeded", "report": "skipped"}
    assert final["handlers"] == {"alert": "succeeded", "notify": "succeeded"}
    assert final["flow"]["cleanup"]["depends_on"] == [{"task": "load", "on": "failure"}]
    entries = cluster.entries()
    assert [T.count(entries, "start", t) for t in ("load", "alert", "notify")] == [1, 1, 2]
    notified = [e for e in entries if e["task"] == "notify" and e["event"] == "start"]
    assert {e["epoch"] for e in notified} == {1, 2} and all(e["handled"]["task"] == "load" for e in notified)
    shown = run_cli("status", run_id, cwd=cluster.tmp, env=cluster.env())
    assert "cleanup (after load: failure)" in shown.stdout and "alert (handler)" in shown.stdout
    assert "skipped" in shown.stdout
    events = run_cli("events", run_id, "--json", cwd=cluster.tmp, env=cluster.env())
    kinds = [e["kind"] for e in json.loads(events.stdout)]
    assert kinds.count("handler_done") == 2 and "task_skipped" in kinds and "resumed" in kinds
