"""Hostile and broken messages on both queues are refused and logged, never executed."""

from __future__ import annotations

import json
import pickle
import uuid
from typing import Any

import pytest
from kombu import Connection

from orchestrator.errors import RunNotFound
from orchestrator.runtime.broker import CONTROL_QUEUE, RUN_QUEUE, RUN_TASK, SUBMIT_TASK
from orchestrator.state.states import RunState
from tests.support.cli import wait_until
from tests.support.cluster import Cluster

pytestmark = pytest.mark.timeout(120)


class Boom:
    """Unpickling this would create a file: proof that a pickle was executed."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


def publish(url: str, queue: str, task: str, body: bytes, content_type: str) -> None:
    """A raw Celery (protocol 2) message with exactly the given body bytes."""
    with Connection(url) as connection:
        producer = connection.Producer()
        producer.publish(
            body,
            routing_key=queue,
            exchange="",
            content_type=content_type,
            content_encoding="binary" if "pickle" in content_type else "utf-8",
            headers={"task": task, "id": str(uuid.uuid4()), "lang": "py", "argsrepr": "", "kwargsrepr": ""},
            declare=[],
        )


def log_has(cluster: Cluster, name: str, text: str) -> bool:
    return text in (cluster.tmp / f"{name}.log").read_text(errors="replace")


def test_pickled_and_malformed_messages_are_refused(cluster: Cluster) -> None:
    cluster.start_scheduler()
    cluster.start_node("node-1")
    cluster.wait_nodes("node-1")
    marker = cluster.tmp / "pickle-was-executed"
    evil = pickle.dumps(((), {"payload": Boom(str(marker))}, {}))
    for queue, task, name in ((CONTROL_QUEUE, SUBMIT_TASK, "scheduler"), (RUN_QUEUE, RUN_TASK, "node-1")):
        publish(cluster.broker_url, queue, task, evil, "application/x-python-serialize")
        wait_until(
            lambda n=name: log_has(cluster, n, "Refusing to deserialize untrusted content of type pickle"),
            timeout=30,
            what=f"{name} to refuse the pickled message\n{cluster.tail()}",
        )
        publish(cluster.broker_url, queue, task, b"{not json", "application/json")
        wait_until(
            lambda n=name: log_has(cluster, n, "Can't decode message body"),
            timeout=30,
            what=f"{name} to refuse the malformed JSON\n{cluster.tail()}",
        )
    bad_attempt = json.dumps([[], {"run_id": "../../etc/passwd", "attempt": "one", "epoch": 1}, {}])
    publish(cluster.broker_url, RUN_QUEUE, RUN_TASK, bad_attempt.encode(), "application/json")
    wait_until(
        lambda: log_has(cluster, "node-1", "malformed attempt message refused"),
        timeout=30,
        what=f"the node to refuse the malformed attempt\n{cluster.tail()}",
    )
    bad_submit = json.dumps([[], {"payload": {"run_id": "x", "package": "not a package"}}, {}])
    publish(cluster.broker_url, CONTROL_QUEUE, SUBMIT_TASK, bad_submit.encode(), "application/json")
    wait_until(
        lambda: log_has(cluster, "scheduler", "submission 'x' refused"),
        timeout=30,
        what=f"the scheduler to refuse the malformed submission\n{cluster.tail()}",
    )
    assert not marker.exists(), "a pickled message was deserialised"
    # The refusal is logged before its row is committed: wait for the row.
    refused = wait_until(lambda: _maybe_run(cluster, "x"), timeout=30, what="the refused run's row")
    assert refused.state is RunState.FAILED and "refused" in (refused.error or "")
    # The cluster still works after all that.
    good = cluster.tmp / "good.yaml"
    good.write_text("name: good\ntasks:\n  - {id: a, shell: 'true'}\n")
    from orchestrator.packages.validation import load_package

    run_id = cluster.client.submit(load_package(good))
    assert cluster.client.wait(run_id, timeout=60)["state"] == "succeeded"


def _maybe_run(cluster: Cluster, run_id: str) -> Any:
    try:
        return cluster.services.repository.run_row(run_id)
    except RunNotFound:
        return None
