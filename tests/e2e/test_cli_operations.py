"""``deploy``, ``schedule``, ``purge`` and ``submit NAME`` as real subprocesses, on SQLite and PostgreSQL.

The commands run with the environment of the test's process cluster (its
broker, database and checkpoint root); the tests that run packages start a
scheduler and a worker node in it.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_failover import FAST
from tests.support.cli import run_cli, wait_until, write_package
from tests.support.cluster import Cluster

pytestmark = pytest.mark.timeout(180)


def package(version_marker: str = "v1") -> dict[str, Any]:
    return {
        "name": "tick",
        "description": f"the {version_marker} of tick",
        "variables": {"n": {"type": "int", "default": 1}},
        "tasks": [{"id": "a", "python": "tests.support.tasks:step", "params": {"marker": version_marker}}],
    }


def cli(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, cwd=cluster.tmp, env=cluster.env(), timeout=120)


def as_json(cluster: Cluster, *args: str) -> Any:
    result = cli(cluster, *args, "--json")
    assert result.returncode == 0, f"orchestrator {' '.join(args)} --json:\n{result.stdout}{result.stderr}"
    return json.loads(result.stdout)


def test_deploy_versions_and_reads_the_catalog(cluster: Cluster) -> None:
    v1 = write_package(cluster.tmp / "tick.yaml", package("v1"))
    first = as_json(cluster, "deploy", str(v1))
    assert (first["name"], first["version"], first["created"]) == ("tick", 1, True)
    assert as_json(cluster, "deploy", str(v1))["created"] is False, "the same definition: no new version"
    v2 = write_package(cluster.tmp / "list", package("v2"))  # a file named like a subcommand
    assert as_json(cluster, "deploy", "./list")["version"] == 2

    assert [(d["name"], d["version"]) for d in as_json(cluster, "deploy", "list")] == [("tick", 2)]
    assert [d["version"] for d in as_json(cluster, "deploy", "history", "tick")] == [2, 1]
    shown = as_json(cluster, "deploy", "show", "tick", "--version", "1")
    assert shown["definition"]["tasks"][0]["params"] == {"marker": "v1"}
    assert "the v2 of tick" in cli(cluster, "deploy", "list").stdout

    bad = write_package(cluster.tmp / "bad.yaml", {"name": "tick", "tasks": [{"id": "a"}]})
    result = cli(cluster, "deploy", str(bad))
    assert result.returncode == 2 and "error" in result.stderr
    missing = cli(cluster, "deploy", "show", "nope")
    assert missing.returncode == 2 and "package 'nope' is not deployed" in missing.stderr
    assert v2.exists()


def test_schedule_commands(cluster: Cluster) -> None:
    as_json(cluster, "deploy", str(write_package(cluster.tmp / "tick.yaml", package())))
    added = as_json(
        cluster,
        "schedule", "add", "nightly", "tick", "--cron", "0 2 * * *", "--timezone", "Europe/Berlin",
        "--var", "n=5", "--catchup", "all", "--overlap", "queue",
    )  # fmt: skip
    assert added["timing"] == "cron '0 2 * * *' (Europe/Berlin)"
    assert (added["catchup"], added["overlap"], added["variables"], added["paused"]) == (
        "all",
        "queue",
        {"n": 5},
        False,
    )
    assert added["next_slot_at"].endswith(("01:00:00+00:00", "00:00:00+00:00"))  # 02:00 in Berlin

    assert [s["name"] for s in as_json(cluster, "schedule", "list")] == ["nightly"]
    assert as_json(cluster, "schedule", "pause", "nightly")["paused"] is True
    assert as_json(cluster, "schedule", "show", "nightly")["next_slot_at"] is None
    assert as_json(cluster, "schedule", "resume", "nightly")["paused"] is False
    updated = as_json(
        cluster, "schedule", "update", "nightly", "--every", "15m", "--var", "n=6", "--version", "1"
    )
    assert (updated["timing"], updated["timezone"], updated["variables"], updated["version"]) == (
        "every 15m",
        "UTC",
        {"n": 6},
        1,
    )
    assert as_json(cluster, "schedule", "remove", "nightly") == {"removed": "nightly"}
    assert as_json(cluster, "schedule", "list") == []

    for args, message in [
        (["add", "x", "tick", "--cron", "0 2 * *"], "five fields"),
        (["add", "x", "tick", "--every", "15 minutes"], "duration"),
        (["add", "x", "tick", "--every", "1h", "--timezone", "Europe/Berlin"], "--cron only"),
        (["add", "x", "tick", "--cron", "0 2 * * *", "--timezone", "Mars/Base"], "unknown time zone"),
        (["add", "x", "nope", "--every", "1h"], "not deployed"),
        (["add", "x", "tick", "--every", "1h", "--var", "n=many"], "cannot read"),
        (["add", "X!", "tick", "--every", "1h"], "invalid schedule name"),
        (["show", "nope"], "no schedule 'nope'"),
    ]:
        result = cli(cluster, "schedule", *args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert message in result.stderr.replace("\n", " "), (args, result.stderr)


def test_submit_by_name_runs_the_deployed_version(cluster: Cluster) -> None:
    cluster.overrides.update(FAST)
    cluster.start_scheduler()
    cluster.start_node("node-1")
    as_json(cluster, "deploy", str(write_package(cluster.tmp / "v1.yaml", package("v1"))))
    as_json(cluster, "deploy", str(write_package(cluster.tmp / "v2.yaml", package("v2"))))
    cluster.wait_nodes("node-1")

    pinned = as_json(cluster, "submit", "tick", "--version", "1", "--var", "n=3", "--wait", "--timeout", "90")
    latest = as_json(cluster, "submit", "tick", "--wait", "--timeout", "90")
    assert (pinned["state"], pinned["version"]) == ("succeeded", 1)
    assert (latest["state"], latest["version"]) == ("succeeded", 2)
    assert cluster.services.repository.run_row(pinned["run_id"]).variables["values"] == {"n": 3}

    as_json(
        cluster, "schedule", "add", "daily", "tick", "--cron", "0 3 * * *", "--version", "1", "--var", "n=4"
    )
    now = as_json(cluster, "schedule", "run-now", "daily")
    assert now["run_id"].startswith("daily-now-")

    def succeeded() -> Any:
        result = cli(cluster, "status", now["run_id"], "--json")  # not found until the scheduler took it
        return (
            result.returncode == 0 and (found := json.loads(result.stdout))["state"] == "succeeded" and found
        )

    final = wait_until(succeeded, timeout=90, what=f"the run-now run to succeed\n{cluster.tail()}")
    assert final["version"] == 1
    assert cluster.services.repository.run_row(now["run_id"]).variables["values"] == {"n": 4}

    for args, message in [
        (["tick", "--version", "9"], "has no version 9"),
        (["no-such-package"], "is not deployed"),
        (["missing.yaml"], "is no file, nor a deployed package's name"),
        ([str(cluster.tmp / "v1.yaml"), "--version", "1"], "--version is for a deployed package's name"),
    ]:
        result = cli(cluster, "submit", *args)
        assert result.returncode == 2 and message in result.stderr.replace("\n", " "), (args, result.stderr)


def test_require_deployed_refuses_a_file_at_the_scheduler(cluster: Cluster) -> None:
    cluster.overrides.update({**FAST, "ORCHESTRATOR_REQUIRE_DEPLOYED": "true"})
    cluster.start_scheduler()
    result = cli(
        cluster, "submit", str(write_package(cluster.tmp / "tick.yaml", package())), "--wait", "--json"
    )
    assert result.returncode == 1, result.stderr
    final = json.loads(result.stdout)
    assert final["state"] == "failed" and "ORCHESTRATOR_REQUIRE_DEPLOYED" in final["error"]
    assert [e["kind"] for e in as_json(cluster, "events", final["run_id"])] == ["refused"]


def test_purge_command(cluster: Cluster) -> None:
    report = as_json(cluster, "purge", "--older-than", "30d", "--dry-run")
    assert (report["runs"], report["dry_run"]) == (0, True)
    assert as_json(cluster, "purge")["runs"] == 0, "ORCHESTRATOR_RETENTION_DAYS by default"
    result = cli(cluster, "purge", "--older-than", "soon")
    assert result.returncode == 2 and "duration 'soon'" in result.stderr
    cluster.overrides["ORCHESTRATOR_RETENTION_DAYS"] = "0"
    result = cli(cluster, "purge")
    assert result.returncode == 2 and "give --older-than" in result.stderr
    assert Path(cluster.tmp).is_dir()
