"""Node loss with real processes: SIGKILL and SIGSTOP of whole worker nodes, a Redis restart,
two schedulers, and a batch of runs; on SQLite and PostgreSQL."""

from __future__ import annotations

import itertools
import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from checkpoints.s3 import S3CheckpointStore
from orchestrator.packages.model import Package
from orchestrator.packages.validation import parse_package
from orchestrator.state.states import RunState
from tests.support import tasks as T
from tests.support.cli import run_cli, wait_until
from tests.support.cluster import Cluster

pytestmark = pytest.mark.timeout(180)

FAST = {
    "ORCHESTRATOR_LEASE_TTL": "2",
    "ORCHESTRATOR_HEARTBEAT_INTERVAL": "0.5",
    "ORCHESTRATOR_CLAIM_TIMEOUT": "4",
}
HOLD_AT = 4


def ten_tasks(hold: Path, *, max_restarts: int = 5, name: str = "ten", pad: int = 0) -> Package:
    """t1 -> ... -> t10; t6 saves progress unit by unit and holds before unit HOLD_AT.

    ``pad``: bytes added to each of t6's progress saves.
    """
    tasks: list[dict[str, Any]] = []
    for n in range(1, 11):
        task: dict[str, Any] = {
            "id": f"t{n}",
            "python": "tests.support.tasks:step",
            "depends_on": [f"t{n - 1}"] if n > 1 else [],
        }
        if n == 6:
            task["python"] = "tests.support.tasks:units"
            task["params"] = {
                "units": 8,
                "hold_at": HOLD_AT,
                "hold": str(hold),
                **({"pad": pad} if pad else {}),
            }
        tasks.append(task)
    return parse_package({"name": name, "max_restarts": max_restarts, "tasks": tasks})


@pytest.fixture(params=["filesystem", pytest.param("s3", marks=pytest.mark.slow)])
def store_kind(request: pytest.FixtureRequest, cluster: Cluster) -> str:
    """Run the test once with checkpoints in a directory and once in a bucket of a real SeaweedFS."""
    if request.param == "s3":
        cluster.overrides.update(request.getfixturevalue("seaweed").settings_env())
    return str(request.param)


def holding(cluster: Cluster, epoch: int) -> bool:
    return any(
        e["event"] == "holding" and e["task"] == "t6" and e["epoch"] == epoch for e in cluster.entries()
    )


def start(cluster: Cluster, nodes: int = 3, schedulers: int = 1) -> list[str]:
    names = [f"node-{n}" for n in range(1, nodes + 1)]
    for index in range(schedulers):
        cluster.start_scheduler(f"scheduler-{index + 1}")
    for name in names:
        cluster.start_node(name)
    cluster.wait_nodes(*names)
    return names


def status(cluster: Cluster, run_id: str) -> dict[str, Any]:
    return cluster.client.status(run_id)


def finished(cluster: Cluster, run_id: str, timeout: float = 60) -> dict[str, Any]:
    return wait_until(
        lambda: (s := _maybe_status(cluster, run_id)) and RunState(s["state"]).finished and s,
        timeout=timeout,
        what=f"run {run_id} to finish\n{cluster.tail()}",
    )


def _maybe_status(cluster: Cluster, run_id: str) -> dict[str, Any] | None:
    try:
        return status(cluster, run_id)
    except Exception:
        return None


def event_kinds(cluster: Cluster, run_id: str) -> list[str]:
    return [e.kind for e in cluster.services.repository.events(run_id)]


def test_killed_node_run_resumes_on_another_node(cluster: Cluster, store_kind: str) -> None:
    """The acceptance scenario at default settings (lease 5 s): kill-to-resumed under 10 s."""
    start(cluster)
    hold = cluster.tmp / "release"
    run_id = cluster.client.submit(ten_tasks(hold))
    wait_until(lambda: holding(cluster, 1), timeout=60, what=f"t6 to hold\n{cluster.tail()}")
    saved = cluster.services.store.load("ten", run_id)
    assert saved is not None and len(saved.tasks) == 5, "the checkpoint is in the configured store"
    assert (store_kind == "s3") == isinstance(cluster.services.store, S3CheckpointStore)
    victim = status(cluster, run_id)["node"]
    killed_at = time.time()
    cluster.kill(victim)
    hold.touch()  # the next attempt must not wait

    def resumed() -> Any:
        return next((e for e in cluster.services.repository.events(run_id) if e.kind == "resumed"), None)

    event = wait_until(resumed, timeout=30, what=f"the run to resume elsewhere\n{cluster.tail()}")
    recovery = event.at.timestamp() - killed_at
    assert recovery < 10, f"kill-to-resumed took {recovery:.1f} s"
    final = finished(cluster, run_id)
    assert final["state"] == "succeeded", final

    cli_status = run_cli("status", run_id, "--json", cwd=cluster.tmp, env=cluster.env())
    shown = json.loads(cli_status.stdout)
    assert shown["restarts"] == 1 and shown["node"] not in (None, victim) and shown["attempt"] == 2
    assert set(shown["tasks"].values()) == {"succeeded"}
    entries = cluster.entries()
    for n in range(1, 6):
        assert T.count(entries, "start", f"t{n}") == 1, f"t{n} ran again"
    units = [e["unit"] for e in entries if e["event"] == "unit"]
    assert units == list(range(8)), "t6 resumed from its last progress save"
    assert event.detail["skipped"] == 5
    cli_events = run_cli("events", run_id, "--json", cwd=cluster.tmp, env=cluster.env())
    kinds = [e["kind"] for e in json.loads(cli_events.stdout)]
    for kind in ("node_lost", "fenced", "resubmitted", "resumed", "finished"):
        assert kind in kinds
    assert (
        kinds.index("node_lost") < kinds.index("fenced") < kinds.index("resubmitted") < kinds.index("resumed")
    )


def test_stopped_node_is_fenced_and_cannot_write_after_it_wakes(cluster: Cluster, store_kind: str) -> None:
    cluster.overrides.update(FAST)
    start(cluster)
    hold = cluster.tmp / "release"
    run_id = cluster.client.submit(ten_tasks(hold))
    wait_until(lambda: holding(cluster, 1), timeout=60, what=f"t6 to hold\n{cluster.tail()}")
    zombie = status(cluster, run_id)["node"]
    cluster.signal(zombie, signal.SIGSTOP)
    wait_until(lambda: holding(cluster, 2), timeout=30, what=f"attempt 2 to reach t6\n{cluster.tail()}")
    hold.touch()  # both attempts may now go on: only the new one may write anything
    cluster.signal(zombie, signal.SIGCONT)
    final = finished(cluster, run_id)
    assert final["state"] == "succeeded" and final["node"] != zombie
    entries = cluster.entries()
    stale_saves = [e for e in entries if e["event"] == "saved" and e["epoch"] == 1 and e["unit"] >= HOLD_AT]
    assert stale_saves == [], "the fenced attempt saved progress after it woke"
    assert not [e for e in entries if e["epoch"] == 1 and e["task"] in {f"t{n}" for n in range(7, 11)}]
    attempts = cluster.services.repository.attempts(run_id)
    assert [a.state.value for a in attempts] == ["lost", "succeeded"]
    assert event_kinds(cluster, run_id).count("finished") == 1


def test_run_fails_after_max_restarts_and_keeps_its_checkpoint(cluster: Cluster) -> None:
    cluster.overrides.update(FAST)
    start(cluster, nodes=1)
    hold = cluster.tmp / "never"
    run_id = cluster.client.submit(ten_tasks(hold, max_restarts=2))
    for epoch in (1, 2, 3):
        wait_until(lambda e=epoch: holding(cluster, e), timeout=60, what=f"attempt {epoch}\n{cluster.tail()}")
        cluster.kill("node-1")
        cluster.start_node("node-1")
    final = finished(cluster, run_id)
    assert final["state"] == "failed" and final["restarts"] == 3
    assert "max_restarts (2) exhausted" in final["error"]
    checkpoint = cluster.checkpoint_root / "ten" / run_id
    assert list(checkpoint.glob("snapshot-*.json")), "the checkpoint is kept"
    assert [a.state.value for a in cluster.services.repository.attempts(run_id)] == ["lost"] * 3


def test_redis_restart_mid_run_loses_nothing(
    tmp_path: Path, restartable_redis: Any, database_url: str
) -> None:
    server = restartable_redis
    with redis.Redis.from_url(server.url) as client:
        client.flushdb()
    cluster = Cluster(tmp_path, server.url, database_url)
    try:
        start(cluster, nodes=2)
        hold = tmp_path / "release"
        run_id = cluster.client.submit(ten_tasks(hold))
        wait_until(lambda: holding(cluster, 1), timeout=60, what=f"t6 to hold\n{cluster.tail()}")
        server.restart()
        hold.touch()
        final = finished(cluster, run_id, timeout=90)
        assert final["state"] == "succeeded", final
        entries = cluster.entries()
        assert all(T.count(entries, "end", f"t{n}") >= 1 for n in range(1, 11))
        assert T.count(entries, "start", "t1") == 1
    finally:
        cluster.stop()


def test_redis_losing_its_data_mid_run_is_rebuilt_from_sql(cluster: Cluster) -> None:
    cluster.overrides.update(FAST)
    start(cluster, nodes=2)
    hold = cluster.tmp / "release"
    run_id = cluster.client.submit(ten_tasks(hold))
    wait_until(lambda: holding(cluster, 1), timeout=60, what=f"t6 to hold\n{cluster.tail()}")
    cluster.services.redis.flushdb()
    wait_until(cluster.services.liveness.marker_present, timeout=30, what="the scheduler to rebuild")
    hold.touch()
    final = finished(cluster, run_id)
    assert final["state"] == "succeeded", final
    assert T.count(cluster.entries(), "start", "t1") == 1


def test_two_schedulers_resubmit_a_lost_run_exactly_once(cluster: Cluster, store_kind: str) -> None:
    cluster.overrides.update(FAST)
    start(cluster, nodes=2, schedulers=2)
    hold = cluster.tmp / "release"
    run_id = cluster.client.submit(ten_tasks(hold))
    wait_until(lambda: holding(cluster, 1), timeout=60, what=f"t6 to hold\n{cluster.tail()}")
    cluster.kill(status(cluster, run_id)["node"])
    hold.touch()
    final = finished(cluster, run_id)
    assert final["state"] == "succeeded" and final["restarts"] == 1
    kinds = event_kinds(cluster, run_id)
    assert kinds.count("resubmitted") == 1 and kinds.count("fenced") == 1
    assert len(cluster.services.repository.attempts(run_id)) == 2


def test_submit_wait_exit_codes(cluster: Cluster, tmp_path: Path) -> None:
    start(cluster, nodes=1)
    good = tmp_path / "good.yaml"
    good.write_text("name: good\ntasks:\n  - {id: a, shell: 'true'}\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: bad\ntasks:\n  - {id: a, shell: 'true'}\n  - {id: b, shell: 'echo disk full >&2; exit 5', depends_on: [a]}\n"
    )
    ok = run_cli("submit", str(good), "--wait", "--timeout", "60", "--json", cwd=tmp_path, env=cluster.env())
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["state"] == "succeeded"
    failed = run_cli(
        "submit", str(bad), "--wait", "--timeout", "60", "--json", cwd=tmp_path, env=cluster.env()
    )
    assert failed.returncode == 1
    body = json.loads(failed.stdout)
    assert body["state"] == "failed" and "task 'b' failed" in body["error"] and "disk full" in body["error"]


def test_fifty_runs_over_three_nodes_never_run_twice_at_once(cluster: Cluster) -> None:
    start(cluster)
    package = parse_package(
        {
            "name": "small",
            "tasks": [
                {"id": "a", "python": "tests.support.tasks:step"},
                {"id": "b", "python": "tests.support.tasks:step", "depends_on": ["a"]},
                {"id": "c", "python": "tests.support.tasks:step", "depends_on": ["b"]},
            ],
        }
    )
    run_ids = [cluster.client.submit(package) for _ in range(50)]
    states = [finished(cluster, run_id, timeout=120)["state"] for run_id in run_ids]
    assert states == ["succeeded"] * 50
    repo = cluster.services.repository
    nodes_used = set()
    for run_id in run_ids:
        attempts = repo.attempts(run_id)
        claimed = [a for a in attempts if a.claimed_at is not None]
        assert len(claimed) == 1, f"{run_id} was claimed {len(claimed)} times"
        nodes_used.add(claimed[0].node)
        spans = sorted((a.claimed_at, a.ended_at) for a in claimed)
        for (_, end), (begin, _) in itertools.pairwise(spans):
            assert end is not None and end <= begin, f"{run_id} ran on two nodes at once"
    assert len(nodes_used) >= 2, "the work was spread over the nodes"
    assert T.count(cluster.entries(), "end", "a") == 50
