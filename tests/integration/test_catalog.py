"""The package catalog and submissions by name, in process (the harness of ``test_scheduler.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.control.client import Client
from orchestrator.errors import PackageNotDeployed, VariableInvalid
from orchestrator.observability.metrics import metrics
from orchestrator.packages.validation import parse_package
from orchestrator.runtime.broker import SUBMIT_TASK
from orchestrator.state.catalog import Catalog
from orchestrator.state.states import RunState
from tests.integration.test_scheduler import Harness, assert_refused, make_harness, package, task

V1 = package(task("a"), name="etl", variables={"n": {"type": "int", "default": 1}})
V2 = package(task("a"), task("b", "a"), name="etl", variables={"n": {"type": "int", "default": 1}})
SECRET = package(task("a"), name="etl", variables={"pw": {"type": "str", "sensitive": True}})


@pytest.fixture
def harness(
    tmp_path: Path, redis_url: str, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Harness]:
    yield from make_harness(tmp_path, redis_url, database_url, monkeypatch)


def catalog(harness: Harness) -> Catalog:
    return Catalog(harness.repo.sessions)


def by_name(harness: Harness, name: str = "etl", **kwargs: Any) -> dict[str, Any]:
    """The payload ``Client.submit_deployed`` sends."""
    Client(harness.sched).submit_deployed(name, **kwargs)
    sent = harness.sched.recorder.sent.pop()
    assert sent.name == SUBMIT_TASK
    return sent.kwargs["payload"]


def forget_messages(harness: Harness) -> None:
    for services in harness.made:
        services.recorder.sent.clear()


def test_deploying_numbers_versions_and_an_unchanged_definition_is_no_new_version(harness: Harness) -> None:
    first, created = catalog(harness).deploy(parse_package(V1))
    assert (first.version, created) == (1, True)
    again, created = catalog(harness).deploy(parse_package(V1))
    assert (again.version, created) == (1, False)
    second, created = catalog(harness).deploy(parse_package(V2))
    assert (second.version, created) == (2, True)
    back, created = catalog(harness).deploy(parse_package(V1))  # a rollback is a new version
    assert (back.version, created, back.definition_hash) == (3, True, first.definition_hash)

    assert [d.version for d in catalog(harness).history("etl")] == [3, 2, 1]
    assert [(d.name, d.version) for d in catalog(harness).latest_versions()] == [("etl", 3)]
    assert catalog(harness).definition(catalog(harness).get("etl", 2))["tasks"][1]["id"] == "b"
    with pytest.raises(PackageNotDeployed, match="has no version 9"):
        catalog(harness).get("etl", 9)
    with pytest.raises(PackageNotDeployed, match="is not deployed"):
        catalog(harness).get("other")


def test_a_deployed_package_runs_by_name_and_the_run_records_its_version(harness: Harness) -> None:
    catalog(harness).deploy(parse_package(V1))
    catalog(harness).deploy(parse_package(V2))

    latest = harness.scheduler.submit(by_name(harness, variables={"n": "5"}, run_id="latest"))
    pinned = harness.scheduler.submit(by_name(harness, version=1, run_id="pinned"))
    assert (latest, pinned) == ("latest", "pinned")
    run = harness.repo.run_row("latest")
    assert (run.state, run.package_version, run.variables["values"]) == (RunState.QUEUED, 2, {"n": 5})
    assert len(harness.repo.definition("etl", run.definition_hash)["tasks"]) == 2
    old = harness.repo.run_row("pinned")
    assert old.package_version == 1
    assert len(harness.repo.definition("etl", old.definition_hash)["tasks"]) == 1
    assert len(harness.messages()) == 2
    assert Client(harness.sched).status("latest")["version"] == 2


def test_the_client_checks_variables_against_the_deployed_version(harness: Harness) -> None:
    catalog(harness).deploy(parse_package(V1))
    with pytest.raises(VariableInvalid, match="not of type int|cannot read"):
        Client(harness.sched).submit_deployed("etl", {"n": "many"})
    with pytest.raises(PackageNotDeployed):
        Client(harness.sched).submit_deployed("nope")
    assert harness.sched.recorder.sent == [], "bad input never reaches the queue"


def test_a_foreign_producer_submits_by_name_and_the_scheduler_checks_it(harness: Harness) -> None:
    """What a Celery producer without this project sends (the README's message)."""
    catalog(harness).deploy(parse_package(V1))
    plain = {"run_id": "from-django-1", "package": "etl", "variables": {"n": 3}}
    assert harness.scheduler.submit(plain) == "from-django-1"
    assert harness.repo.run_row("from-django-1").variables == {"values": {"n": 3}, "secrets": {}}

    for run_id, body, reason in [
        ("bad-var", {"package": "etl", "variables": {"n": "x"}}, "cannot read"),
        ("unknown-var", {"package": "etl", "variables": {"m": 1}}, "unknown variable 'm'"),
        ("not-deployed", {"package": "nope"}, "package 'nope' is not deployed"),
        ("bad-version", {"package": "etl", "version": 4}, "has no version 4"),
    ]:
        forget_messages(harness)
        assert harness.scheduler.submit({"run_id": run_id, **body}) is None
        assert_refused(harness, run_id, reason)


def test_sensitive_values_sent_in_clear_are_stored_encrypted(harness: Harness) -> None:
    harness.overrides["secret_key"] = "k"
    harness.start_scheduler()
    catalog(harness).deploy(parse_package(SECRET))
    assert (
        harness.scheduler.submit({"run_id": "s-1", "package": "etl", "variables": {"pw": "hunter2"}}) == "s-1"
    )
    stored = harness.repo.run_row("s-1").variables
    assert stored["values"] == {} and set(stored["secrets"]) == {"pw"}
    assert "hunter2" not in str(stored)
    # A required sensitive variable given encrypted by the client counts as given.
    assert harness.scheduler.submit(by_name(harness, variables={"pw": "x"}, run_id="s-2")) == "s-2"
    forget_messages(harness)
    assert harness.scheduler.submit({"run_id": "s-3", "package": "etl"}) is None
    assert_refused(harness, "s-3", "required variable(s) without a value: pw")


def test_require_deployed_refuses_inline_packages_at_the_scheduler(harness: Harness) -> None:
    harness.overrides["require_deployed"] = True
    harness.start_scheduler()
    catalog(harness).deploy(parse_package(V1))
    refused = metrics().submissions_refused._value.get()

    inline = harness.payload(V1, run_id="inline")  # the client sends it: the scheduler decides
    assert harness.scheduler.submit(inline) is None
    assert_refused(harness, "inline", "ORCHESTRATOR_REQUIRE_DEPLOYED")
    assert harness.repo.run_row("inline").package == "etl"
    assert metrics().submissions_refused._value.get() == refused + 1

    assert harness.scheduler.submit(by_name(harness, run_id="named")) == "named", "by name still runs"
    assert harness.repo.run_row("named").state is RunState.QUEUED
