"""The web UI's pure parts: graph layout, timeline grouping, progress, the query string, the guard, the socket."""

from __future__ import annotations

import re
import socket
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from starlette.requests import Request

from orchestrator.errors import ClusterUnavailable
from orchestrator.state.listing import Cursor
from orchestrator.ui.detail import dependencies, progress_texts, shown_states
from orchestrator.ui.graph import NODE_H, NODE_W, GraphTask, layers_of, render_svg
from orchestrator.ui.query import RunQuery
from orchestrator.ui.security import CSRF_HEADER, SESSION_COOKIE, Guard, Refused, safe_next
from orchestrator.ui.sockets import bind
from orchestrator.ui.timeline import group_by_attempt

# -- graph ---------------------------------------------------------------------------------------


def boxes(svg: str) -> dict[str, tuple[int, int]]:
    """Task id to the top-left corner of its box, read back from the SVG."""
    found = re.findall(r'data-task="([^"]+)"[^>]*><title>.*?</title><rect x="(\d+)" y="(\d+)"', svg)
    return {task: (int(x), int(y)) for task, x, y in found}


def diamond() -> list[GraphTask]:
    return [
        GraphTask("extract", [], "succeeded"),
        GraphTask("left", ["extract"], "running", "2 of 3 items"),
        GraphTask("right", ["extract"], "pending"),
        GraphTask("join", ["left", "right"], "pending"),
        GraphTask("report", ["join", "extract"], "pending"),
    ]


def test_each_task_sits_one_layer_right_of_its_deepest_dependency() -> None:
    assert layers_of(diamond()) == {"extract": 0, "left": 1, "right": 1, "join": 2, "report": 3}
    placed = boxes(render_svg(diamond()))
    assert placed.keys() == {"extract", "left", "right", "join", "report"}
    for task in diamond():
        for dep in task.depends_on:
            assert placed[dep][0] < placed[task.id][0], (dep, task.id)


def test_no_two_task_boxes_overlap() -> None:
    tasks = [GraphTask(f"t{n}", [f"t{n // 3}"] if n else [], "pending") for n in range(30)]
    placed = list(boxes(render_svg(tasks)).values())
    assert len(placed) == 30
    for i, (x1, y1) in enumerate(placed):
        for x2, y2 in placed[i + 1 :]:
            assert abs(x1 - x2) >= NODE_W or abs(y1 - y2) >= NODE_H, ((x1, y1), (x2, y2))


def test_a_long_edge_bends_around_the_layers_it_crosses_and_every_edge_is_drawn() -> None:
    svg = render_svg(diamond())
    edges = re.findall(r'data-from="([^"]+)" data-to="([^"]+)" d="([^"]+)"', svg)
    assert {(a, b) for a, b, _ in edges} == {
        ("extract", "left"),
        ("extract", "right"),
        ("left", "join"),
        ("right", "join"),
        ("join", "report"),
        ("extract", "report"),
    }
    long_edge = next(d for a, b, d in edges if (a, b) == ("extract", "report"))
    assert long_edge.count("L") + long_edge.count("C") >= 3, long_edge  # passes two placeholder slots


def test_barycenter_ordering_removes_the_crossing_of_two_chains() -> None:
    tasks = [
        GraphTask("a", [], "pending"),
        GraphTask("b", [], "pending"),
        GraphTask("b2", ["b"], "pending"),  # listed first: without reordering the chains cross
        GraphTask("a2", ["a"], "pending"),
    ]
    placed = boxes(render_svg(tasks))
    assert (placed["a"][1] < placed["b"][1]) == (placed["a2"][1] < placed["b2"][1])


def test_states_progress_and_names_are_in_the_svg_escaped() -> None:
    svg = str(render_svg([GraphTask('x"><script>alert(1)</script>', [], "fail<ed>", "1 & 2")]))
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    assert 'data-state="fail&lt;ed&gt;"' in svg and "1 &amp; 2" in svg
    running = str(render_svg(diamond()))
    assert 'data-task="left" data-state="running"' in running and "running · 2 of 3 items" in running


def test_a_cycle_or_an_unknown_dependency_does_not_hang_the_layout() -> None:
    layers = layers_of(
        [GraphTask("a", ["b"], "x"), GraphTask("b", ["a"], "x"), GraphTask("c", ["nope"], "x")]
    )
    assert layers["c"] == 0 and layers["a"] == layers["b"] == 1
    assert render_svg([]).startswith("<svg")


# -- timeline and progress ---------------------------------------------------------------------


def event(n: int, kind: str, attempt: int | None, node: str | None = None, **detail: Any) -> dict[str, Any]:
    return {
        "id": n,
        "at": f"2026-11-26T12:00:{n:02d}+00:00",
        "kind": kind,
        "node": node,
        "attempt": attempt,
        "detail": detail,
    }


def attempt(number: int, node: str, state: str) -> Any:
    return SimpleNamespace(
        number=number,
        epoch=number,
        node=node,
        state=SimpleNamespace(value=state),
        claimed_at=datetime(2026, 11, 26, tzinfo=UTC),
        ended_at=None,
        error=None,
    )


def test_the_timeline_groups_a_recovery_by_attempt_and_counts_checkpoints() -> None:
    events = [
        event(1, "submitted", None, package="p"),
        event(2, "dispatched", 1, epoch=1),
        event(3, "claimed", 1, "node-2", epoch=1),
        event(4, "task_done", 1, "node-2", task="a", seconds=0.1),
        event(5, "checkpoint_saved", 1, "node-2", bytes=10),
        event(6, "node_lost", 1, "node-2"),
        event(7, "fenced", 1, "node-2", epoch=2),
        event(8, "resubmitted", 2, reason="node_lost", epoch=2),
        event(9, "dispatched", 2, epoch=2),
        event(10, "claimed", 2, "node-3", epoch=2),
        event(11, "resumed", 2, "node-3", skipped=1, tasks=["a"]),
        event(12, "task_failed", 2, "node-3", task="b", error="<boom>"),
        event(13, "finished", None, state="failed", error="b failed"),
    ]
    groups = group_by_attempt([attempt(1, "node-2", "lost"), attempt(2, "node-3", "failed")], events)
    assert [g.number for g in groups] == [None, 1, 2]
    assert [e.kind for e in groups[1].entries] == [
        "dispatched",
        "claimed",
        "task_done",
        "node_lost",
        "fenced",
    ]
    assert groups[1].checkpoints == 1 and groups[1].node == "node-2" and groups[1].state == "lost"
    second = groups[2].entries
    assert [e.kind for e in second] == [
        "resubmitted",
        "dispatched",
        "claimed",
        "resumed",
        "task_failed",
        "finished",
    ]
    assert second[3].text == "resumed from the checkpoint: 1 finished task skipped (a)"
    assert second[4].error == "<boom>" and second[4].alert
    assert second[5].alert and second[5].error == "b failed"
    assert (
        groups[1].entries[3].text == "node node-2 lost (its heartbeat expired)" and groups[1].entries[3].alert
    )


def test_foreach_progress_shows_the_items_counted_and_copy_progress_shows_rows() -> None:
    definition = [
        {"id": "load", "foreach": ["eu", "us", "apac"]},
        {"id": "files", "foreach": "{{ outputs.list.files }}"},
        {"id": "copy"},
        {"id": "plain"},
    ]
    events = [
        event(1, "item_done", 2, task="files", item="a.csv"),
        event(2, "copy_progress", 2, task="copy", rows=1200, total=5000),
        event(3, "copy_progress", 2, task="copy", rows=2400, total=5000),
    ]
    items = {"load": {"done": 2, "total": 3}, "files": {"done": 1, "total": None}}
    found = progress_texts(definition, events, {"files": "running"}, items)
    assert found == {"load": "2 of 3 items", "files": "1 item so far", "copy": "2,400 of 5,000 rows"}
    assert progress_texts(definition[1:2], events, {"files": "succeeded"}, items) == {"files": "1 item"}


def test_dependencies_read_plain_ids_and_conditional_entries() -> None:
    assert dependencies({"depends_on": ["a", {"task": "b", "on": "failure"}, {"x": 1}]}) == ["a", "b"]


# -- the run list's query string ------------------------------------------------------------------


def test_a_query_keeps_its_filters_in_its_links_and_reads_them_back() -> None:
    query = RunQuery.of(
        state="failed", package="orders", since="2026-11-26", until="2026-11-27T10:00:00+02:00"
    )
    assert query.since == datetime(2026, 11, 26, tzinfo=UTC)
    assert query.until == datetime(2026, 11, 27, 8, tzinfo=UTC)
    cursor = Cursor(datetime(2026, 11, 26, 12, 0, 0, 123456, tzinfo=UTC), "orders-abc")
    link = query.link(before=cursor)
    assert link.startswith("/?state=failed&package=orders&since=2026-11-26T00") and "before=" in link
    params = dict(p.split("=", 1) for p in link.split("?", 1)[1].split("&"))
    from urllib.parse import unquote

    again = RunQuery.parse({k: unquote(v) for k, v in params.items()})
    assert again == RunQuery(query.state, "orders", query.since, query.until, before=cursor)
    assert Cursor.parse(str(cursor)) == cursor


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("state", "sleeping", "state: 'sleeping' is not one of"),
        ("since", "yesterday", "since: 'yesterday' is not a date or time"),
        ("before", "../../etc", "before: not a cursor"),
        ("limit", "0", "limit: 0 is not between 1 and 500"),
        ("limit", "many", "limit: 'many' is not a number"),
    ],
)
def test_a_bad_query_value_is_refused_with_its_name(field: str, value: str, message: str) -> None:
    with pytest.raises(Refused) as caught:
        RunQuery.parse({field: value})
    assert caught.value.status == 400 and caught.value.message.startswith(message), caught.value.message


# -- the guard ------------------------------------------------------------------------------------


def request(method: str = "POST", **headers: str) -> Request:
    raw = [(k.replace("_", "-").lower().encode(), v.encode()) for k, v in headers.items()]
    return Request(
        {
            "type": "http",
            "method": method,
            "path": "/x",
            "scheme": "http",
            "headers": [(b"host", b"ui.local:8808"), *raw],
            "query_string": b"",
        }
    )


def refusal(guard: Guard, req: Request, csrf: str | None = None) -> tuple[int, str] | None:
    try:
        guard.authorize(req, csrf)
    except Refused as exc:
        return exc.status, exc.message
    return None


def test_actions_need_a_token_and_never_happen_read_only() -> None:
    assert refusal(Guard(None, False), request(authorization="Bearer x")) == (
        403,
        "actions are disabled: set ORCHESTRATOR_UI_TOKEN to allow them",
    )
    assert refusal(Guard("t0ken", True), request(authorization="Bearer t0ken"))[0] == 403  # type: ignore[index]
    guard = Guard("t0ken", False)
    assert refusal(guard, request(authorization="Bearer t0ken")) is None
    assert refusal(guard, request(authorization="Bearer wrong"))[0] == 401  # type: ignore[index]
    assert refusal(guard, request())[0] == 401  # type: ignore[index]


def test_a_session_acts_only_with_its_csrf_token_and_a_forged_cookie_is_no_session() -> None:
    guard = Guard("t0ken", False)
    cookie = guard.new_session()
    session = guard.session(request(cookie=f"{SESSION_COOKIE}={cookie}"))
    assert session is not None
    token = guard.csrf_token(session)
    with_cookie = {"cookie": f"{SESSION_COOKIE}={cookie}"}
    assert refusal(guard, request(**with_cookie), token) is None
    assert refusal(guard, request(**with_cookie, **{CSRF_HEADER.replace("-", "_"): token})) is None
    assert refusal(guard, request(**with_cookie))[0] == 403  # type: ignore[index]
    assert refusal(guard, request(**with_cookie), "0" * 64)[0] == 403  # type: ignore[index]
    forged = cookie.rsplit(".", 1)[0] + "." + "0" * 64
    assert guard.session(request(cookie=f"{SESSION_COOKIE}={forged}")) is None
    assert Guard("other", False).session(request(**with_cookie)) is None  # a new token ends old sessions
    expired = "1000." + "n" * 10
    assert (
        guard.session(request(cookie=f"{SESSION_COOKIE}={expired}.{guard._mac('session', expired)}")) is None
    )


@pytest.mark.parametrize(
    ("headers", "allowed"),
    [
        ({"origin": "http://ui.local:8808"}, True),
        ({"origin": "http://evil.example"}, False),
        ({"origin": "null"}, False),
        ({"sec_fetch_site": "same-origin"}, True),
        ({"sec_fetch_site": "cross-site"}, False),
        ({"referer": "http://ui.local:8808/runs/x"}, True),
        ({"referer": "http://evil.example/page"}, False),
        ({}, True),  # a script, not a browser: it still needs the token
    ],
)
def test_cross_site_requests_are_refused(headers: dict[str, str], allowed: bool) -> None:
    outcome = refusal(Guard("t0ken", False), request(authorization="Bearer t0ken", **headers))
    assert (outcome is None) == allowed, outcome
    if not allowed:
        assert outcome is not None and outcome[0] == 403 and "cross-site" in outcome[1]


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/runs/x?a=1", "/runs/x?a=1"),
        ("//evil.example/", "/"),
        ("https://evil.example/", "/"),
        ("/\\evil", "/"),
        (None, "/"),
    ],
)
def test_after_login_only_a_local_path_is_followed(target: str | None, expected: str) -> None:
    assert safe_next(target) == expected


# -- the listening socket ---------------------------------------------------------------------------


def test_a_taken_port_is_an_error_or_with_fallback_another_free_port() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(
            ClusterUnavailable, match=f"127.0.0.1:{port}: is in use; choose another with --port"
        ):
            bind("127.0.0.1", port)
        other = bind("127.0.0.1", port, fallback=True)
        with other:
            assert other.getsockname()[1] not in (port, 0)


def test_a_foreach_under_way_shows_running_while_its_run_is_active() -> None:
    definition = [{"id": "load", "foreach": ["eu", "us"]}, {"id": "next"}]
    events = [event(1, "item_done", 1, task="load", item="eu")]
    active = {"state": "running", "tasks": {"load": "pending", "next": "pending"}}
    assert shown_states(definition, active, events) == {"load": "running", "next": "pending"}
    assert shown_states(definition, active, []) == {"load": "pending", "next": "pending"}
    ended = {"state": "cancelled", "tasks": {"load": "pending", "next": "pending"}}
    assert shown_states(definition, ended, events) == ended["tasks"]


def test_the_items_of_a_foreach_make_one_line_per_task_and_attempt() -> None:
    events = [event(1, "dispatched", 1, epoch=1)]
    events += [event(2 + n, "item_done", 1, "node-1", task="load", item=f"part-{n}") for n in range(1000)]
    events += [
        event(1002, "item_done", 1, "node-1", task="other", item=7),
        event(1003, "node_lost", 1, "node-1"),
    ]
    events += [event(1004, "resubmitted", 2, reason="node_lost", epoch=2)]
    events += [event(1005, "item_done", 2, "node-2", task="load", item="part-1000")]
    groups = group_by_attempt([attempt(1, "node-1", "lost"), attempt(2, "node-2", "running")], events)
    assert [g.number for g in groups] == [1, 2]  # no submission event: no submission group
    first = groups[0].entries
    assert [e.kind for e in first] == ["dispatched", "item_done", "item_done", "node_lost"]
    assert first[1].text == "task load: 1000 items done (part-0, part-1 … part-999)" and first[1].id == 1001
    assert first[2].text == "task other: item 7 done"
    assert [e.text for e in groups[1].entries][1] == "task load: item part-1000 done"
