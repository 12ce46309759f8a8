"""The web UI through its test client, on a real Redis and on SQLite and PostgreSQL.

The run history is written through the repository, as the scheduler and the
workers write it; the CLI runs as a subprocess on the same database to show that
the API's rows are its ``--json`` rows.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from orchestrator.runtime.broker import CONTROL_QUEUE
from orchestrator.runtime.services import Services
from orchestrator.runtime.settings import Settings
from orchestrator.state.models import NodeState
from orchestrator.state.states import RunState
from tests.support.cli import run_cli, wait_until
from tests.support.ui import attempt_reporter, insert_runs, seed_recovery, ui_client

TOKEN = "ui-test-token-0123456789"
SCRIPT = "<script>window.__xss = 1</script>"


def settings_for(redis_url: str, database_url: str, tmp: Path, **extra: Any) -> Settings:
    return Settings(
        broker_url=redis_url,
        database_url=database_url,
        checkpoint_root=tmp / "checkpoints",
        state_dir=tmp / "state",
        lease_ttl=120,  # the nodes test compares two reads of a heartbeat: it must not expire between
        **extra,
    )


@pytest.fixture
def services(redis_url: str, database_url: str, tmp_path: Path) -> Iterator[Services]:
    found = Services(settings_for(redis_url, database_url, tmp_path, ui_token=TOKEN), broker_url=redis_url)
    yield found
    found.close()


@pytest.fixture
def client(services: Services) -> Iterator[TestClient]:
    yield from ui_client(services)


def cli_json(services: Services, tmp: Path, *args: str) -> Any:
    env = {
        "ORCHESTRATOR_BROKER_URL": services.broker_url,
        "ORCHESTRATOR_DATABASE_URL": services.settings.database_url.get_secret_value(),
        "ORCHESTRATOR_LEASE_TTL": "120",
    }
    result = run_cli(*args, "--json", cwd=tmp, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_the_api_serves_the_rows_of_the_cli_json(
    services: Services, client: TestClient, tmp_path: Path
) -> None:
    seed_recovery(services.repository, "orders-aaaaaaaaaaaa", error="exit 1")
    seed_recovery(services.repository, "orders-bbbbbbbbbbbb")
    services.repository.register_node("node-2", "host", 1, 2, None)
    services.repository.set_node_state("node-2", NodeState.LOST)
    services.liveness.heartbeat("node-3", {"concurrency": 4})
    api_runs = client.get("/api/runs").json()
    assert api_runs["runs"] == cli_json(services, tmp_path, "runs")
    assert [r["run_id"] for r in api_runs["runs"]] == ["orders-bbbbbbbbbbbb", "orders-aaaaaaaaaaaa"]
    assert (api_runs["total"], api_runs["older"], api_runs["newer"]) == (2, None, None)
    run_id = "orders-aaaaaaaaaaaa"
    status = client.get(f"/api/runs/{run_id}").json()
    assert status == cli_json(services, tmp_path, "status", run_id)
    assert status["state"] == "failed" and status["restarts"] == 1 and status["tasks"]["report"] == "failed"
    events = client.get(f"/api/runs/{run_id}/events").json()
    assert events == cli_json(services, tmp_path, "events", run_id)
    assert [e["kind"] for e in events].count("node_lost") == 1
    nodes = client.get("/api/nodes").json()
    assert nodes == cli_json(services, tmp_path, "nodes")
    assert {n["node"]: (n["state"], n["concurrency"]) for n in nodes} == {
        "node-2": ("lost", 2),
        "node-3": ("alive", 4),
    }


def test_the_openapi_description_lists_every_endpoint_with_its_fields(client: TestClient) -> None:
    spec = client.get("/api/openapi.json").json()
    assert {
        "/api/runs",
        "/api/runs/{run_id}",
        "/api/runs/{run_id}/events",
        "/api/nodes",
        "/api/stream",
        "/api/runs/{run_id}/cancel",
        "/api/runs/{run_id}/resume",
    } <= spec["paths"].keys()
    schemas = spec["components"]["schemas"]
    assert {"run_id", "package", "state", "attempt", "restarts", "node", "tasks", "error"} <= schemas[
        "RunStatus"
    ]["properties"].keys()
    assert {"run_id", "submitted_at", "started_at", "duration_seconds"} <= schemas["RunRow"][
        "properties"
    ].keys()
    assert client.get("/docs").status_code == 404  # the interactive docs would load a CDN's scripts


def walk(client: TestClient, url: str, key: str) -> list[list[str]]:
    """Pages of run ids following the ``key`` cursor (older or newer) from ``url``."""
    pages = []
    while True:
        body = client.get(url).json()
        pages.append([r["run_id"] for r in body["runs"]])
        if body[key] is None:
            return pages
        base = url.split("&before=", maxsplit=1)[0].split("&after=", maxsplit=1)[0]
        url = f"{base}&{'before' if key == 'older' else 'after'}={body[key]}"


def test_the_run_list_pages_by_keyset_both_ways_and_filters_in_sql(
    services: Services, client: TestClient
) -> None:
    start = insert_runs(services.repository, 130)
    newest_first = [f"bulk-{n:07d}" for n in range(129, -1, -1)]
    pages = walk(client, "/api/runs?limit=50", "older")
    assert [len(p) for p in pages] == [50, 50, 30]
    assert [i for p in pages for i in p] == newest_first
    last = client.get("/api/runs?limit=50&before=" + client.get("/api/runs?limit=50").json()["older"]).json()
    back = client.get(f"/api/runs?limit=50&after={last['newer']}").json()
    assert [r["run_id"] for r in back["runs"]] == pages[0]
    failed = client.get("/api/runs?state=failed&limit=500").json()
    assert [r["run_id"] for r in failed["runs"]] == [i for i in newest_first if int(i[5:]) % 4 == 1]
    assert failed["total"] == 33 == len(failed["runs"])
    beta = client.get("/api/runs?package=beta&limit=10").json()
    assert (
        beta["total"] == 43
        and [r["run_id"] for r in beta["runs"]] == [i for i in newest_first if int(i[5:]) % 3 == 1][:10]
    )
    since, until = (start + timedelta(seconds=10)).isoformat(), (start + timedelta(seconds=20)).isoformat()
    window = client.get("/api/runs", params={"since": since, "until": until}).json()
    assert [r["run_id"] for r in window["runs"]] == [f"bulk-{n:07d}" for n in range(19, 9, -1)]
    both = client.get("/api/runs", params={"state": "succeeded", "package": "alpha", "since": since}).json()
    assert {r["run_id"] for r in both["runs"]} == {
        f"bulk-{n:07d}" for n in range(10, 130) if n % 12 in (0, 3)
    }
    assert both["total"] == len(both["runs"])


def test_the_runs_page_keeps_its_filters_in_the_url_and_its_links(
    services: Services, client: TestClient
) -> None:
    insert_runs(services.repository, 130)
    page = client.get("/?state=failed&package=beta&limit=5")
    assert page.status_code == 200
    shown = re.findall(r'<tr data-run="([^"]+)">', page.text)
    assert shown == ["bulk-0000121", "bulk-0000109", "bulk-0000097", "bulk-0000085", "bulk-0000073"]
    assert "11 runs match the filters" in page.text
    assert '<option value="failed" selected>' in page.text and 'name="package" value="beta"' in page.text
    older = re.search(r'<a href="([^"]+)" rel="next">', page.text)
    assert older is not None
    link = older[1].replace("&amp;", "&")
    assert "state=failed" in link and "package=beta" in link and "limit=5" in link and "before=" in link
    second = client.get(link)
    assert re.findall(r'<tr data-run="([^"]+)">', second.text)[0] == "bulk-0000061"
    assert 'rel="prev"' in second.text and 'rel="first"' in second.text
    partial = client.get("/?state=failed&package=beta&limit=5&partial=1")
    assert "<html" not in partial.text and re.findall(r'<tr data-run="([^"]+)">', partial.text) == shown


def test_the_run_page_shows_the_graph_the_timeline_by_attempt_and_errors_as_text(
    services: Services, client: TestClient
) -> None:
    seed_recovery(services.repository, "orders-aaaaaaaaaaaa", error=f"exit 1: {SCRIPT}")
    page = client.get("/runs/orders-aaaaaaaaaaaa")
    assert page.status_code == 200
    html = page.text
    tasks = dict(
        re.findall(r'<g class="task [^"]*" id="task-[^"]+" data-task="([^"]+)" data-state="([^"]+)"', html)
    )
    assert tasks == {
        "prepare": "succeeded",
        "generate": "succeeded",
        "load_partition": "succeeded",
        "report": "failed",
    }
    assert "succeeded · 3 of 3 items" in html
    attempts = re.findall(r'<article class="attempt" data-attempt="(\d+)">', html)
    assert attempts == ["0", "1", "2"]
    first, second = html.split('data-attempt="1"')[1].split('data-attempt="2"')
    assert 'data-kind="node_lost"' in first and 'data-kind="fenced"' in first
    assert 'data-kind="resubmitted"' in second and 'data-kind="resumed"' in second
    assert "2 finished tasks skipped (prepare, generate)" in second
    assert SCRIPT not in html and "&lt;script&gt;window.__xss = 1&lt;/script&gt;" in html
    assert html.count("&lt;script&gt;") >= 3  # the run's error, the task's, the timeline's


def test_pages_and_the_api_say_what_is_wrong(client: TestClient) -> None:
    assert client.get("/api/runs/nope").json() == {"detail": "no run 'nope'"}
    assert client.get("/api/runs/nope").status_code == 404
    page = client.get("/runs/nope")
    assert page.status_code == 404 and "no run &#39;nope&#39;" in page.text
    bad = client.get("/?state=sleeping")
    assert bad.status_code == 400 and "state: &#39;sleeping&#39; is not one of" in bad.text
    assert client.get("/api/runs?since=yesterday").status_code == 400
    assert client.get("/api/runs?before=x").json()["detail"].startswith("before: not a cursor")


def test_every_response_carries_the_security_headers_and_no_asset_is_from_elsewhere(
    client: TestClient,
) -> None:
    for path in ("/", "/nodes", "/api/runs", "/login", "/static/ui.css"):
        response = client.get(path)
        assert response.status_code == 200, path
        assert "script-src 'self'" in response.headers["content-security-policy"], path
        assert response.headers["x-frame-options"] == "DENY"
    page = client.get("/").text
    assert re.findall(r'(?:src|href)="(https?:)?//', page) == []
    for asset in re.findall(r'(?:src|href)="(/static/[^"?]+)', page):
        assert client.get(asset).status_code == 200, asset


def test_a_ui_on_loopback_answers_only_to_local_host_names(services: Services) -> None:
    for client in ui_client(services, allowed_hosts=["127.0.0.1", "localhost"]):
        assert client.get("/", headers={"host": "localhost:8808"}).status_code == 200
        assert client.get("/", headers={"host": "evil.example"}).status_code == 400


# -- actions -------------------------------------------------------------------------------------------


def kinds(services: Services, run_id: str) -> list[str]:
    return [e.kind for e in services.repository.events(run_id)]


def test_cancel_is_refused_without_the_token_and_from_another_site_and_works_with_it(
    services: Services, client: TestClient
) -> None:
    seed_recovery(services.repository, "orders-running00000", finish=False)
    url = "/api/runs/orders-running00000/cancel"
    assert client.post(url).status_code == 401
    assert client.post(url, headers={"authorization": "Bearer wrong"}).status_code == 401
    evil = client.post(url, headers={"authorization": f"Bearer {TOKEN}", "origin": "http://evil.example"})
    assert evil.status_code == 403 and "cross-site" in evil.json()["detail"]
    assert "cancel_requested" not in kinds(services, "orders-running00000")
    done = client.post(url, headers={"authorization": f"Bearer {TOKEN}"})
    assert done.status_code == 200 and done.json()["run_id"] == "orders-running00000"
    assert kinds(services, "orders-running00000")[-1] == "cancel_requested"
    assert services.liveness.cancel_requested("orders-running00000")
    conflict = client.post(
        "/api/runs/orders-running00000/resume", headers={"authorization": f"Bearer {TOKEN}"}
    )
    assert conflict.status_code == 409 and "only failed or cancelled runs" in conflict.json()["detail"]


def test_a_person_logs_in_and_acts_through_forms_with_the_csrf_token(
    services: Services, client: TestClient
) -> None:
    seed_recovery(services.repository, "orders-failed000000", error="boom")
    run_page = "/runs/orders-failed000000"
    assert 'id="resume"' in client.get(run_page).text and "log in</a>" in client.get(run_page).text
    refused = client.post(f"{run_page}/resume", data={"csrf": ""}, follow_redirects=False)
    assert refused.status_code == 401 and "the UI token is required" in refused.text
    wrong = client.post("/login", data={"token": "nope", "next": run_page}, follow_redirects=False)
    assert wrong.status_code == 401 and "wrong token" in wrong.text
    login = client.post("/login", data={"token": TOKEN, "next": run_page}, follow_redirects=False)
    assert login.status_code == 303 and login.headers["location"] == run_page
    cookie = login.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    csrf = re.search(r'name="csrf" value="([0-9a-f]{64})"', client.get(run_page).text)
    assert csrf is not None
    assert (
        client.post(f"{run_page}/resume", data={"csrf": "0" * 64}, follow_redirects=False).status_code == 403
    )
    cross = client.post(
        f"{run_page}/resume",
        data={"csrf": csrf[1]},
        headers={"origin": "http://evil.example"},
        follow_redirects=False,
    )
    assert cross.status_code == 403
    assert services.liveness.queue_depth(CONTROL_QUEUE) == 0
    done = client.post(f"{run_page}/resume", data={"csrf": csrf[1]}, follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == run_page
    assert services.liveness.queue_depth(CONTROL_QUEUE) == 1  # the resume message, for a scheduler
    client.post("/logout", follow_redirects=False)
    assert (
        client.post(f"{run_page}/resume", data={"csrf": csrf[1]}, follow_redirects=False).status_code == 401
    )


def test_actions_are_disabled_without_a_token_and_read_only_even_with_it(
    redis_url: str, database_url: str, tmp_path: Path
) -> None:
    without = Services(settings_for(redis_url, database_url, tmp_path), broker_url=redis_url)
    seed_recovery(without.repository, "orders-running00000", finish=False)
    for client in ui_client(without):
        page = client.get("/runs/orders-running00000").text
        assert 'id="cancel"' not in page and "log in" not in page
        refused = client.post("/api/runs/orders-running00000/cancel", headers={"authorization": "Bearer x"})
        assert refused.status_code == 403 and "set ORCHESTRATOR_UI_TOKEN" in refused.json()["detail"]
    with_token = Services(
        settings_for(redis_url, database_url, tmp_path, ui_token=TOKEN), broker_url=redis_url
    )
    for client in ui_client(with_token, read_only=True):
        page = client.get("/runs/orders-running00000").text
        assert 'id="cancel"' not in page and "read-only" in page
        refused = client.post(
            "/api/runs/orders-running00000/cancel", headers={"authorization": f"Bearer {TOKEN}"}
        )
        assert refused.status_code == 403 and "read-only" in refused.json()["detail"]
        assert client.post("/login", data={"token": TOKEN}).status_code == 403
    assert "cancel_requested" not in kinds(without, "orders-running00000")
    without.close()
    with_token.close()


# -- live ------------------------------------------------------------------------------------------------


def messages(lines: Iterator[str]) -> Iterator[dict[str, str]]:
    """SSE messages (their fields) from the stream's lines."""
    current: dict[str, str] = {}
    for line in lines:
        if not line:
            if current:
                yield current
            current = {}
        elif not line.startswith(":"):
            field, _, value = line.partition(": ")
            current[field] = value


def test_the_stream_sends_new_events_and_state_changes_of_a_run(
    services: Services, client: TestClient
) -> None:
    repo = services.repository
    seed_recovery(repo, "orders-running00000", finish=False)
    last = max(e.id for e in repo.events("orders-running00000"))
    seen: list[dict[str, str]] = []
    url = f"/api/stream?run_id=orders-running00000&after={last}&seconds=20"
    with client.stream("GET", url) as response:
        assert response.headers["content-type"].startswith("text/event-stream")

        def changes() -> None:
            reporter = attempt_reporter(repo, "orders-running00000", 2, "node-3")
            reporter.task_started("report", None, 1)  # a state change, no event
            reporter.flush()
            wait_until(lambda: any(m.get("event") == "run-state" for m in seen), timeout=20, what="run-state")
            repo.request_cancel("orders-running00000")  # an event

        writer = threading.Thread(target=changes)
        for message in messages(response.iter_lines()):
            seen.append(message)
            if message.get("event") == "ready":
                writer.start()
            if message.get("event") == "run-event":
                break
        writer.join(timeout=30)
    kinds_seen = [m.get("event") for m in seen if "event" in m]
    assert kinds_seen == ["ready", "run-state", "run-event"], seen
    event = json.loads(seen[-1]["data"])
    assert event["kind"] == "cancel_requested" and event["run_id"] == "orders-running00000"
    assert int(seen[-1]["id"]) == event["id"] > last


def test_a_reconnecting_stream_resumes_after_its_last_event_id(
    services: Services, client: TestClient
) -> None:
    seed_recovery(services.repository, "orders-aaaaaaaaaaaa")
    ids = [e.id for e in services.repository.events("orders-aaaaaaaaaaaa")]
    body = client.get(
        "/api/stream?run_id=orders-aaaaaaaaaaaa&after=0&seconds=1", headers={"last-event-id": str(ids[-3])}
    ).text
    assert [int(i) for i in re.findall(r"^id: (\d+)$", body, re.MULTILINE)] == ids[-2:]


def test_the_general_stream_says_when_a_node_comes_or_goes(services: Services, client: TestClient) -> None:
    found: list[dict[str, str]] = []
    with client.stream("GET", "/api/stream?seconds=20") as response:
        for message in messages(response.iter_lines()):
            found.append(message)
            if message.get("event") == "ready":
                services.liveness.heartbeat("node-9", {"concurrency": 1})
            if message.get("event") == "nodes":
                break
    assert json.loads(found[-1]["data"]) == {"node-9": "alive"}


def test_a_finished_run_state_is_what_the_page_shows(services: Services, client: TestClient) -> None:
    seed_recovery(services.repository, "orders-bbbbbbbbbbbb")
    html = client.get("/runs/orders-bbbbbbbbbbbb?partial=1").text
    assert "<html" not in html and 'id="run-state">succeeded<' in html
    assert RunState.SUCCEEDED.value in html
