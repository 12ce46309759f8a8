"""A copy whose node is SIGKILLed twice mid-copy, and a paused stale attempt, with real processes.

The run resumes on another node each time, from the last batch committed in
the destination; at the end the destination holds exactly the source's rows
(count, no duplicate keys, a checksum of the contents). A node SIGSTOPped
inside a batch, woken after a newer attempt finished the copy, writes nothing.
Parametrised over the destination (SQLite, PostgreSQL, MariaDB); the source
is a SQLite file, the run state SQLite.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.packages import parse_package
from tests.integration.test_failover import FAST, finished, start, status
from tests.support.cli import wait_until
from tests.support.cluster import Cluster
from tests.support.etl import checksum, database, execute, rows

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]

ROWS = 2000
BATCH = 50
TABLE = "CREATE TABLE {name} (id INTEGER NOT NULL PRIMARY KEY, name VARCHAR(40), amount NUMERIC(12, 2))"


@pytest.fixture
def etl_cluster(tmp_path: Path, redis_url: str) -> Iterator[Cluster]:
    harness = Cluster(tmp_path, redis_url, f"sqlite:///{tmp_path / 'state.db'}")
    harness.overrides.update(FAST)
    yield harness
    harness.stop()


def copy_package(source: str, destination: str, hold: Path, hold_epochs: list[int]) -> Any:
    return parse_package(
        {
            "name": "copy-failover",
            "max_restarts": 5,
            "connections": {"src": {"url": source}, "dst": {"url": destination}},
            "tasks": [
                {
                    "id": "copy",
                    "copy": {
                        "source": {"connection": "src", "table": "orders", "key": ["id"]},
                        "destination": {"connection": "dst", "table": "orders"},
                        "batch_size": BATCH,
                        "transform": "tests.support.etl_tasks:hold",
                    },
                    "params": {"hold": str(hold), "hold_epochs": hold_epochs, "hold_batch": 3},
                }
            ],
        }
    )


def prepare(source: str, destination: str) -> None:
    execute(source, TABLE.format(name="orders"))
    values = [{"id": n, "name": f"n{n}", "amount": f"{n % 977}.{n % 100:02d}"} for n in range(1, ROWS + 1)]
    execute(source, "INSERT INTO orders VALUES (:id, :name, :amount)", params=values)
    execute(destination, TABLE.format(name="orders"))


def holding(cluster: Cluster, epoch: int) -> dict[str, Any] | None:
    return next((e for e in cluster.entries() if e["event"] == "holding" and e["epoch"] == epoch), None)


def wait_holding(cluster: Cluster, epoch: int) -> dict[str, Any]:
    return wait_until(
        lambda: holding(cluster, epoch),
        timeout=90,
        what=f"attempt {epoch} to hold mid-copy\n{cluster.tail()}",
    )


def exactly_the_source(source: str, destination: str) -> None:
    expected = checksum(source, "orders", "id")
    assert expected[0] == ROWS
    assert checksum(destination, "orders", "id") == expected


@pytest.mark.parametrize("backend", ["sqlite", "postgresql", "mariadb"])
def test_copy_survives_two_node_kills(etl_cluster: Cluster, tmp_path: Path, backend: str) -> None:
    cluster = etl_cluster
    with database("sqlite", tmp_path, "source") as source, database(backend, tmp_path, "dest") as destination:
        prepare(source, destination)
        start(cluster, nodes=3)
        run_id = cluster.client.submit(copy_package(source, destination, tmp_path, [1, 2]))
        killed = []
        for epoch in (1, 2):
            wait_holding(cluster, epoch)
            node = status(cluster, run_id)["node"]
            done = rows(destination, "SELECT rows_copied FROM orchestrator_copy_state")[0][0]
            assert done == 2 * BATCH * epoch, "each attempt held in its own third batch, after two commits"
            cluster.kill(node)
            killed.append(node)
        final = finished(cluster, run_id, timeout=120)
        assert final["state"] == "succeeded" and final["restarts"] == 2, final
        assert final["node"] not in killed
        assert final["progress"]["copy"]["rows"] == ROWS and final["progress"]["copy"]["done"] is True
        exactly_the_source(source, destination)
        assert rows(destination, "SELECT epoch, rows_copied FROM orchestrator_copy_state") == [(3, ROWS)]


def test_a_paused_stale_attempt_writes_nothing(etl_cluster: Cluster, tmp_path: Path) -> None:
    cluster = etl_cluster
    with (
        database("sqlite", tmp_path, "source") as source,
        database("sqlite", tmp_path, "dest") as destination,
    ):
        prepare(source, destination)
        start(cluster, nodes=2)
        run_id = cluster.client.submit(copy_package(source, destination, tmp_path, [1]))
        wait_holding(cluster, 1)
        zombie = status(cluster, run_id)["node"]
        cluster.signal(zombie, signal.SIGSTOP)
        final = finished(cluster, run_id, timeout=120)
        assert final["state"] == "succeeded" and final["node"] != zombie, final
        exactly_the_source(source, destination)
        (tmp_path / "release-1").touch()
        cluster.signal(zombie, signal.SIGCONT)
        wait_until(
            lambda: any(e["event"] == "released" and e["epoch"] == 1 for e in cluster.entries()),
            timeout=60,
            what=f"the stale attempt to wake and go on\n{cluster.tail()}",
        )
        wait_until(
            lambda: (
                "batch 3 refused" in (tmp_path / f"{zombie}.log").read_text()
                or "fenced" in (tmp_path / f"{zombie}.log").read_text().lower()
            ),
            timeout=60,
            what=f"the stale attempt's batch to be refused\n{cluster.tail()}",
        )
        exactly_the_source(source, destination)
        assert rows(destination, "SELECT epoch, rows_copied FROM orchestrator_copy_state") == [(2, ROWS)]
