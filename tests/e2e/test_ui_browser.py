"""The web UI in a real browser: Debian's Chromium driven by Playwright, against real processes.

Each test starts a scheduler, worker nodes and ``orchestrator ui`` as separate
processes (tests/support/cluster.py) and opens the UI in headless Chromium,
launched by its path: no browser is ever downloaded. Without ``/usr/bin/chromium``
(``apt-get install chromium``) or without Playwright for Python the tests are
skipped, saying which is missing.

``ORCHESTRATOR_UI_SCREENSHOT=docs/ui-run.png`` makes the recovery test save the
README's screenshot of a run page after a node loss.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.errors import RunNotFound
from orchestrator.packages.model import Package
from orchestrator.packages.validation import parse_package
from orchestrator.state.states import RunState
from tests.support import tasks as T
from tests.support.cli import wait_until
from tests.support.cluster import Cluster
from tests.support.ui import start_ui

pytestmark = [
    pytest.mark.timeout(240),
    # One backend is enough in a browser; the API tests cover SQLite and PostgreSQL.
    pytest.mark.parametrize("database_url", ["sqlite"], indirect=True),
]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
FAST = {
    "ORCHESTRATOR_LEASE_TTL": "2",
    "ORCHESTRATOR_HEARTBEAT_INTERVAL": "0.5",
    "ORCHESTRATOR_CLAIM_TIMEOUT": "4",
}
TOKEN = "browser-test-token-0123456789"
WAIT_MS = 60_000
SCRIPT = "<script>window.__xss = 1</script>"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium): browser tests skipped")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="Playwright for Python is not installed: browser tests skipped"
    )
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(WAIT_MS)
    opened = context.new_page()
    yield opened
    context.close()


def expect(locator: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    playwright_expect.set_options(timeout=WAIT_MS)  # a loaded machine: waits poll up to a deadline
    return playwright_expect(locator)


def start(cluster: Cluster, *nodes: str) -> str:
    cluster.start_scheduler()
    for node in nodes:
        cluster.start_node(node)
    cluster.wait_nodes(*nodes)
    return start_ui(cluster)


def mark(page: Any) -> None:
    """A flag in the page's JavaScript state: still there later means the page was never reloaded."""
    page.evaluate("window.__notReloaded = true")


def not_reloaded(page: Any) -> bool:
    return bool(page.evaluate("window.__notReloaded === true"))


def etl(hold: Path) -> Package:
    """The example's shape: prepare -> generate -> load_partition (eu, us, apac; us holds) -> report."""
    step = "tests.support.tasks:step"
    return parse_package(
        {
            "name": "orders_nightly",
            "max_restarts": 3,
            "tasks": [
                {"id": "prepare", "python": step},
                {"id": "generate", "python": step, "depends_on": ["prepare"]},
                {
                    "id": "load_partition",
                    "python": step,
                    "foreach": ["eu", "us", "apac"],
                    "params": {"hold": str(hold), "hold_item": "us"},
                    "depends_on": ["generate"],
                },
                {"id": "report", "python": step, "depends_on": ["load_partition"]},
            ],
        }
    )


def state(cluster: Cluster, run_id: str) -> str | None:
    """The run's state, ``None`` until the scheduler has recorded the submission."""
    try:
        return str(cluster.client.status(run_id)["state"])
    except RunNotFound:
        return None


def holding(cluster: Cluster, epoch: int) -> bool:
    return any(e["event"] == "holding" and e["epoch"] == epoch for e in cluster.entries())


def test_a_submitted_run_shows_in_the_list_live_and_its_page_shows_the_graph_and_the_error_as_text(
    cluster: Cluster, page: Any
) -> None:
    url = start(cluster, "node-1")
    page.goto(url)
    expect(page.locator("#live-status")).to_have_text("live")
    mark(page)
    failing = parse_package(
        {
            "name": "shows_errors",
            "tasks": [
                {"id": "first", "python": "tests.support.tasks:step"},
                {
                    "id": "breaks",
                    "python": "tests.support.tasks:step",
                    "params": {"fail": True, "message": f"bad row {SCRIPT}"},
                    "depends_on": ["first"],
                },
                {"id": "after", "python": "tests.support.tasks:step", "depends_on": ["breaks"]},
            ],
        }
    )
    run_id = cluster.client.submit(failing)
    row = page.locator(f'tr[data-run="{run_id}"]')
    expect(row).to_be_visible()  # the list updated itself: nothing reloaded it
    assert not_reloaded(page)
    wait_until(lambda: RunState(state(cluster, run_id) or "queued").finished, timeout=60, what=cluster.tail())
    expect(row.locator(".state")).to_have_text("failed")
    row.locator("a").first.click()
    expect(page.locator("#run-state")).to_have_text("failed")
    graph = page.locator("svg.graph g.task")
    expect(graph).to_have_count(3)
    states = {g.get_attribute("data-task"): g.get_attribute("data-state") for g in graph.all()}
    assert states == {"first": "succeeded", "breaks": "failed", "after": "upstream_failed"}
    assert page.locator('svg.graph path.edge[data-from="first"][data-to="breaks"]').count() == 1
    expect(page.locator("#run-error")).to_contain_text(SCRIPT)  # shown as text
    expect(page.locator('tr[data-task="breaks"] pre.error')).to_have_text(f"RuntimeError: bad row {SCRIPT}")
    assert page.evaluate("window.__xss") is None, "the error's script ran"


def test_a_node_killed_mid_run_shows_lost_and_resumed_on_the_open_page_without_a_reload(
    cluster: Cluster, page: Any
) -> None:
    cluster.overrides.update(FAST)
    url = start(cluster, "node-1", "node-2")
    hold = cluster.tmp / "release"
    run_id = cluster.client.submit(etl(hold))
    wait_until(lambda: holding(cluster, 1), timeout=60, what=f"the us item to hold\n{cluster.tail()}")
    page.goto(f"{url}runs/{run_id}")
    expect(page.locator("#run-state")).to_have_text("running")
    expect(page.locator("#live-status")).to_have_text("live")
    expect(page.locator("#task-load_partition")).to_have_attribute("data-state", "running")
    mark(page)
    victim = cluster.client.status(run_id)["node"]
    cluster.kill(victim)
    expect(page.locator('li[data-kind="node_lost"]')).to_contain_text(f"node {victim} lost")
    expect(page.locator('li[data-kind="fenced"]')).to_be_visible()
    hold.touch()
    resumed = page.locator('li[data-kind="resumed"]')
    expect(resumed).to_contain_text("2 finished tasks skipped (prepare, generate)")
    expect(page.locator("#run-state")).to_have_text("succeeded")
    assert not_reloaded(page), "the page was reloaded"
    attempts = page.locator("article.attempt")
    expect(attempts).to_have_count(3)  # the submission, the lost attempt, the resumed one
    expect(attempts.nth(1).locator("h3")).to_contain_text(f"on {victim}")
    expect(attempts.nth(2).locator('li[data-kind="claimed"]')).not_to_contain_text(victim)
    expect(page.locator("#task-load_partition")).to_contain_text("3 of 3 items")
    expect(page.locator("#run-restarts")).to_have_text("1 of 3")
    assert T.count(cluster.entries(), "start", "prepare") == 1
    screenshot = os.environ.get("ORCHESTRATOR_UI_SCREENSHOT")
    if screenshot:
        page.screenshot(path=screenshot, full_page=True)


def test_the_run_page_shows_a_task_s_log_live_as_text(cluster: Cluster, page: Any) -> None:
    url = start(cluster, "node-1")
    gate = cluster.tmp / "gate"
    package = parse_package(
        {
            "name": "talks",
            "tasks": [
                {"id": "gate", "python": "tests.support.tasks:step", "params": {"hold": str(gate)}},
                {
                    "id": "talk",
                    "python": "tests.support.tasks:chatter",
                    "params": {"lines": 2, "say": f"said {SCRIPT}"},
                    "depends_on": ["gate"],
                },
            ],
        }
    )
    run_id = cluster.client.submit(package)
    wait_until(lambda: holding(cluster, 1), timeout=60, what=f"the gate to hold\n{cluster.tail()}")
    page.goto(f"{url}runs/{run_id}")
    expect(page.locator("#live-status")).to_have_text("live")
    expect(page.locator("#logs")).to_contain_text("no task has logged anything yet")
    mark(page)
    gate.touch()
    panel = page.locator('details.log[data-task="talk"][data-attempt="1"]')
    expect(panel.locator(".log-line")).to_have_count(3)  # arrived while the page was open
    expect(panel.locator(".log-line").nth(0)).to_contain_text("line 1 of talk")
    expect(panel.locator(".log-line").nth(2)).to_contain_text(f"said {SCRIPT}")  # shown as text
    expect(panel.locator("summary")).to_contain_text("attempt 1, 3 lines")
    expect(page.locator("#run-state")).to_have_text("succeeded")
    assert not_reloaded(page), "the page was reloaded"
    assert page.evaluate("window.__xss") is None, "the log line's script ran"


def test_cancel_works_with_the_token_and_is_refused_without_it(cluster: Cluster, page: Any) -> None:
    cluster.overrides["ORCHESTRATOR_UI_TOKEN"] = TOKEN
    url = start(cluster, "node-1")
    long = parse_package(
        {
            "name": "long",
            "tasks": [{"id": "wait", "python": "tests.support.tasks:sleepy", "params": {"seconds": 90}}],
        }
    )
    run_id = cluster.client.submit(long)
    wait_until(
        lambda: state(cluster, run_id) == "running", timeout=60, what=f"the run to start\n{cluster.tail()}"
    )
    page.goto(f"{url}runs/{run_id}")
    page.locator("#cancel").click()
    expect(page.locator("#refusal")).to_contain_text("the UI token is required")
    assert cluster.client.status(run_id)["state"] == "running"
    assert "cancel_requested" not in [e.kind for e in cluster.services.repository.events(run_id)]

    page.goto(f"{url}login?next=/runs/{run_id}")
    page.fill('input[name="token"]', "not-the-token")
    page.locator('form.login button[type="submit"]').click()
    expect(page.locator("#login-message")).to_have_text("wrong token")
    page.fill('input[name="token"]', TOKEN)
    page.locator('form.login button[type="submit"]').click()
    expect(page.locator("#run-state")).to_have_text("running")
    page.locator("#cancel").click()
    expect(page.locator("#run-state")).to_have_text("cancelled")
    assert page.url == f"{url}runs/{run_id}"
    assert cluster.client.status(run_id)["state"] == "cancelled"
    expect(page.locator("#resume")).to_be_visible()  # a cancelled run can be resumed from here
