"""Task logs kept with the run, on a real Redis and on SQLite and PostgreSQL.

Lines are appended as a worker's attempt appends them (the reporter on the fenced
event stream), written to SQL by the schedulers' projector and by the attempt's
outcome transaction, then read as ``orchestrator logs``, the API and the run page
read them: in order, attempts and items apart, each line once, bounded per task
with a note, a fenced attempt's lines refused, every line escaped on the page.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from orchestrator.control.projection import Projector
from orchestrator.control.stream import EventStream
from orchestrator.packages.validation import parse_package
from orchestrator.runtime.services import Services
from orchestrator.state.projection import Projections, write_records
from orchestrator.state.records import Record
from orchestrator.state.repository import Repository
from orchestrator.state.states import RunState, TaskState
from orchestrator.state.tasklogs import LOG, TaskLogs, log_detail
from orchestrator.ui.stream import Feed
from tests.integration.test_failover import FAST, finished, start, status
from tests.integration.test_ui_api import TOKEN, settings_for
from tests.support.cli import wait_until
from tests.support.cluster import Cluster
from tests.support.ui import attempt_reporter, etl_package, seed_recovery, ui_client
from workers.reporter import AttemptReporter

RUN = "orders-logs0000000"


@pytest.fixture
def services(redis_url: str, database_url: str, tmp_path: Path) -> Iterator[Services]:
    found = Services(settings_for(redis_url, database_url, tmp_path, ui_token=TOKEN), broker_url=redis_url)
    yield found
    found.close()


@pytest.fixture
def client(services: Services) -> Iterator[TestClient]:
    yield from ui_client(services)


def messages(repo: Repository, run_id: str, **filters: object) -> list[str]:
    return [line.message for line in TaskLogs(repo.sessions).lines(run_id, **filters)]  # type: ignore[arg-type]


def test_lines_go_through_the_stream_to_sql_attempts_and_items_apart_each_once(services: Services) -> None:
    repo = services.repository
    prefix = f"orch-{uuid.uuid4().hex[:12]}"
    client = redis.Redis.from_url(services.broker_url)
    stream = EventStream(client, prefix=prefix)
    projector = Projector(EventStream(client, prefix=prefix), Projections(repo.sessions))
    repo.register_package(etl_package())
    repo.create_run(RUN, etl_package(), {}, max_restarts=5, epoch=1)
    client.set(f"{prefix}:epoch:{RUN}", 1)
    first = AttemptReporter(stream, RUN, 1, 1, "node-1")
    first.task_started("prepare", None, 1)
    first.task_log("prepare", None, 1, "info", "preparing")
    first.task_log("load_partition", "eu", 1, "info", "eu: 10 rows")
    first.task_log("load_partition", "us", 1, "warning", "us: slow")
    projector.run()

    client.set(f"{prefix}:epoch:{RUN}", 2)  # node-1 lost, fenced: its later lines are refused
    first.task_log("load_partition", "us", 1, "info", "written by a fenced attempt")
    second = AttemptReporter(stream, RUN, 2, 2, "node-2")
    second.task_log("load_partition", "us", 1, "info", "us: resumed")
    second.task_log("report", None, 1, "info", "done")
    projector.run()
    with repo.sessions.begin() as session:  # the outcome transaction writes what it sent again
        write_records(session, second.unprojected() + [r for _, r in second._sent])

    assert messages(repo, RUN) == ["preparing", "eu: 10 rows", "us: slow", "us: resumed", "done"]
    assert messages(repo, RUN, attempt=1) == ["preparing", "eu: 10 rows", "us: slow"]
    assert messages(repo, RUN, task="load_partition", attempt=2) == ["us: resumed"]
    lines = TaskLogs(repo.sessions).lines(RUN, task="load_partition")
    assert [(line.item, line.attempt, line.level) for line in lines] == [
        ("eu", 1, "info"),
        ("us", 1, "warning"),
        ("us", 2, "info"),
    ]
    assert TaskLogs(repo.sessions).lines(RUN, after=lines[1].id) == [
        line for line in TaskLogs(repo.sessions).lines(RUN) if line.id is not None and line.id > lines[1].id
    ]
    client.close()


def log_record(run_id: str, seq: int, task: str, text: str, attempt: int = 1) -> Record:
    return Record(
        LOG, run_id, attempt, attempt, "n1", seq, 1e9 + seq, None, log_detail(task, None, 1, "info", text)
    )


def test_each_task_keeps_its_newest_lines_and_says_how_many_were_dropped(services: Services) -> None:
    repo = services.repository
    repo.register_package(etl_package())
    repo.create_run(RUN, etl_package(), {}, max_restarts=5, epoch=1)
    with repo.sessions.begin() as session:
        batch = [log_record(RUN, n, "prepare", f"prepare {n}") for n in range(1, 5)]
        write_records(session, [*batch, log_record(RUN, 5, "report", "report 1")], log_lines=3)
    with repo.sessions.begin() as session:
        write_records(
            session, [log_record(RUN, n, "prepare", f"prepare {n}", 2) for n in range(1, 3)], log_lines=3
        )

    lines = TaskLogs(repo.sessions).lines(RUN)
    assert [(line.level, line.message) for line in lines][:2] == [
        ("note", "3 earlier lines of task prepare dropped (at most 10,000 lines are kept per task)"),
        ("info", "prepare 4"),
    ]
    assert [line.message for line in lines[1:]] == ["prepare 4", "report 1", "prepare 1", "prepare 2"]
    assert [line.attempt for line in lines[1:]] == [1, 1, 2, 2]
    assert messages(repo, RUN, task="report") == ["report 1"], "another task's lines and notes are its own"

    with repo.sessions.begin() as session:  # a replay (the outcome transaction, say) of dropped lines
        write_records(session, [log_record(RUN, 2, "prepare", "prepare 2")], log_lines=3)
    assert TaskLogs(repo.sessions).lines(RUN) == lines, "a dropped line stays dropped, counted once"


def seed_logs(repo: Repository, run_id: str) -> AttemptReporter:
    """Lines of both attempts of a recovered run (left running); the reporter of attempt 2."""
    seed_recovery(repo, run_id, finish=False)
    first, second = attempt_reporter(repo, run_id, 1, "node-2"), attempt_reporter(repo, run_id, 2, "node-3")
    first.task_log("prepare", None, 1, "info", "prepared <script>window.__xss = 1</script>")
    first.task_log("load_partition", "eu", 1, "info", "eu loaded")
    second.task_log("load_partition", "us", 1, "error", "us failed once")
    second.task_log("load_partition", "us", 2, "info", "us loaded")
    return second


def test_the_api_and_the_run_page_show_the_lines_escaped_per_task_and_attempt(
    services: Services, client: TestClient
) -> None:
    seed_logs(services.repository, RUN)
    rows = client.get(f"/api/runs/{RUN}/logs").json()
    assert [(r["task"], r["item"], r["attempt"], r["try"], r["level"]) for r in rows] == [
        ("prepare", None, 1, 1, "info"),
        ("load_partition", "eu", 1, 1, "info"),
        ("load_partition", "us", 2, 1, "error"),
        ("load_partition", "us", 2, 2, "info"),
    ]
    assert [
        r["message"] for r in client.get(f"/api/runs/{RUN}/logs?task=load_partition&attempt=2").json()
    ] == [
        "us failed once",
        "us loaded",
    ]
    newest = client.get(f"/api/runs/{RUN}/logs?limit=1").json()
    assert [r["message"] for r in newest] == ["us loaded"]
    assert client.get("/api/runs/no-such-run/logs").status_code == 404
    unknown = client.get(f"/api/runs/{RUN}/logs?task=nope")
    assert unknown.status_code == 400 and "no task 'nope'" in unknown.text

    page = client.get(f"/runs/{RUN}").text
    assert "prepared &lt;script&gt;window.__xss = 1&lt;/script&gt;" in page
    assert "<script>window.__xss" not in page
    assert 'data-task="load_partition" data-attempt="2" data-item="us"' in page
    assert 'data-task="load_partition" data-attempt="1" data-item="eu"' in page

    spec = client.get("/api/openapi.json").json()
    assert "/api/runs/{run_id}/logs" in spec["paths"]
    assert {"task", "item", "attempt", "try", "level", "message"} <= spec["components"]["schemas"]["LogRow"][
        "properties"
    ].keys()


def test_a_new_line_is_a_change_the_open_page_hears_of(services: Services, client: TestClient) -> None:
    repo = services.repository
    second = seed_logs(repo, RUN)
    feed = Feed(client.app.state.ctx, RUN, max(e.id for e in repo.events(RUN)))  # type: ignore[attr-defined]
    assert feed.poll() == []
    second.task_log("load_partition", "apac", 1, "info", "apac started")
    sent = feed.poll()
    assert len(sent) == 1 and sent[0].startswith("event: run-state")


def test_a_finished_run_s_lines_are_all_there_once_its_outcome_is(services: Services) -> None:
    repo = services.repository
    reporter = seed_logs(repo, RUN)
    reporter.task_log("report", None, 1, "info", "last words")
    repo.finish_attempt(
        RUN, 2, 2, "node-3", RunState.SUCCEEDED, None, {"report": TaskState.SUCCEEDED}, reporter.unprojected()
    )
    assert messages(repo, RUN)[-1] == "last words"
    assert len(messages(repo, RUN)) == 5


# -- a real node SIGKILLed mid-task ---------------------------------------------------------------

SECRET = "s3cr3t-in-the-log-line"


@pytest.mark.timeout(180)
def test_the_lines_of_a_task_on_a_node_sigkilled_mid_task_are_there_up_to_the_kill(cluster: Cluster) -> None:
    """The task logs 40 lines (and a password, masked), then holds; its node is SIGKILLed.

    Every line logged before the kill is in SQL (written by the scheduler from the
    stream, not by the dead node); the run resumes on the other node, whose attempt
    logs its own lines, kept apart.
    """
    cluster.overrides.update(FAST)
    start(cluster, nodes=2)
    hold = cluster.tmp / "release"
    package = parse_package(
        {
            "name": "chatty",
            "variables": {"password": {"type": "str", "sensitive": True, "default": SECRET}},
            "tasks": [
                {
                    "id": "talk",
                    "python": "tests.support.tasks:chatter",
                    "params": {"lines": 40, "hold": str(hold)},
                }
            ],
        }
    )
    run_id = cluster.client.submit(package)
    logged = lambda: any(e["event"] == "logged" and e["epoch"] == 1 for e in cluster.entries())  # noqa: E731
    wait_until(logged, timeout=60, what=f"the task to log its lines\n{cluster.tail()}")
    victim = status(cluster, run_id)["node"]
    cluster.kill(victim)

    expected = [f"line {n} of talk" for n in range(1, 41)] + ["connecting with password ***"]
    repo = cluster.services.repository
    wait_until(
        lambda: messages(repo, run_id, attempt=1) == expected,
        timeout=30,
        what=f"attempt 1's lines in SQL: {messages(repo, run_id, attempt=1)[-3:]}\n{cluster.tail()}",
    )
    hold.touch()
    final = finished(cluster, run_id)
    assert final["state"] == "succeeded" and final["attempt"] == 2, final
    assert messages(repo, run_id, attempt=2) == expected
    lines = TaskLogs(repo.sessions).lines(run_id)
    assert {line.attempt for line in lines} == {1, 2} and all(SECRET not in line.message for line in lines)
    assert victim not in {status(cluster, run_id)["node"]}
