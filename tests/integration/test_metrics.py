"""/metrics of a scheduler and of worker nodes, scraped over HTTP during a node loss."""

from __future__ import annotations

import socket
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.test_failover import FAST, HOLD_AT, finished, holding, ten_tasks
from tests.support.cli import wait_until
from tests.support.cluster import Cluster
from tests.support.contract import METRICS

pytestmark = pytest.mark.timeout(180)

CONTRACT = METRICS


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_follow_a_node_loss(cluster: Cluster) -> None:
    cluster.overrides.update(FAST)
    scheduler_port = free_port()
    cluster.overrides["ORCHESTRATOR_METRICS_PORT"] = str(scheduler_port)
    ports = {f"node-{n}": free_port() for n in (1, 2, 3)}
    cluster.start_scheduler()
    for name, port in ports.items():
        cluster.start_node(name, metrics_port=port)
    cluster.wait_nodes(*ports)
    wait_until(
        lambda: value(_try_scrape(scheduler_port) or "", "orchestrator_worker_nodes_alive") == 3,
        timeout=30,
        what="the scheduler to count 3 live nodes",
    )
    hold = cluster.tmp / "release"
    run_id = cluster.client.submit(ten_tasks(hold))
    wait_until(lambda: holding(cluster, 1), timeout=60, what=f"t6 to hold\n{cluster.tail()}")
    victim = cluster.client.status(run_id)["node"]
    cluster.kill(victim)
    hold.touch()
    final = finished(cluster, run_id)
    assert final["state"] == "succeeded"
    survivor = final["node"]

    wait_until(
        lambda: value(scrape(scheduler_port), "orchestrator_worker_nodes_alive") == 2,
        timeout=30,
        what="the scheduler to count 2 live nodes",
    )
    text = scrape(scheduler_port)
    assert value(text, "orchestrator_run_restarts_total", package="ten", reason="node_lost") == 1
    assert value(text, "orchestrator_node_loss_detected_total") == 1
    assert value(text, "orchestrator_runs_submitted_total", package="ten") == 1
    assert run_id not in text

    node_text = scrape(ports[survivor])
    assert value(node_text, "orchestrator_recovery_seconds_count") == 1
    recovery = value(node_text, "orchestrator_recovery_seconds_sum")
    assert 0 < recovery < 10
    # The resumed attempt wrote: its claiming checkpoint, one per finished task (t6..t10)
    # and one per progress save of t6 after the hold.
    expected_writes = 1 + 5 + (8 - HOLD_AT)
    assert value(node_text, "orchestrator_checkpoint_writes_total", result="ok") == expected_writes
    assert value(node_text, "orchestrator_checkpoint_write_seconds_count") == expected_writes
    assert value(node_text, "orchestrator_tasks_skipped_total", package="ten") == 5
    for n in range(6, 11):
        assert value(node_text, "orchestrator_task_duration_seconds_count", package="ten", task=f"t{n}") == 1
    assert value(node_text, "orchestrator_runs_finished_total", package="ten", state="succeeded") == 1
    assert run_id not in node_text


def test_every_contract_metric_is_exposed_with_its_type(cluster: Cluster) -> None:
    port = free_port()
    cluster.overrides["ORCHESTRATOR_METRICS_PORT"] = str(port)
    node_port = free_port()
    cluster.start_scheduler()
    cluster.start_node("node-1", metrics_port=node_port)
    cluster.wait_nodes("node-1")
    text = wait_until(lambda: _try_scrape(port), timeout=30, what="the scheduler's /metrics")
    families = {f.name: f.type for f in text_string_to_metric_families(text)}
    for name, kind in CONTRACT.items():
        assert families.get(name) == kind, f"{name}: {families.get(name)!r} is not {kind}"
    labels: set[str] = set()
    for family in text_string_to_metric_families(
        text + wait_until(lambda: _try_scrape(node_port), timeout=30)
    ):
        for sample in family.samples:
            labels.update(sample.labels)
    assert not labels & {"run_id", "run", "variables"}, labels


def _try_scrape(port: int) -> Any:
    try:
        return scrape(port)
    except OSError:
        return None
