"""Task logs on the worker's side: what ``ctx.log`` and a shell task's output hand to the hooks
(masked, per item and try, tracebacks included), and how the reporter appends each line at once."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest

from checkpoints import FilesystemCheckpointStore
from orchestrator.packages.model import ForeachItem
from orchestrator.packages.validation import parse_package
from orchestrator.state.tasklogs import MAX_LINE_CHARS
from tests.support import tasks as T
from tests.unit.test_reporter import StubStream, reporter
from workers.context import TaskContext
from workers.executor import ExecutionHooks, ExecutionOptions, RunRequest, execute

SECRET = "hunter2-very-secret"


class Lines(ExecutionHooks):
    """Collects the lines the hooks receive."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, ForeachItem | None, int, str, str]] = []
        self._lock = threading.Lock()

    def task_log(
        self, task_id: str, item: ForeachItem | None, try_number: int, level: str, message: str
    ) -> None:
        with self._lock:
            self.lines.append((task_id, item, try_number, level, message))

    def of(self, task_id: str) -> list[tuple[ForeachItem | None, int, str, str]]:
        return [(item, n, level, text) for t, item, n, level, text in self.lines if t == task_id]


@pytest.fixture(autouse=True)
def _hooks(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv(T.LOG_ENV, str(tmp_path / "executions.jsonl"))
    T.HOOKS.clear()
    yield
    T.HOOKS.clear()


def run(definition: dict[str, Any], tmp_path: Any, **variables: Any) -> Lines:
    lines = Lines()
    store = FilesystemCheckpointStore(tmp_path / "checkpoints")
    package = parse_package({"name": "pkg", **definition})
    request = RunRequest(package, "r1", variables=variables, epoch=1, attempt=1)
    execute(request, ExecutionOptions(store=store, hooks=lines))
    return lines


def test_ctx_log_lines_reach_the_hooks_masked_per_item(tmp_path: Any) -> None:
    lines = run(
        {
            "variables": {"password": {"type": "str", "sensitive": True}},
            "tasks": [
                {"id": "talk", "python": "tests.support.tasks:chatter", "params": {"lines": 2}},
                {"id": "each", "python": "tests.support.tasks:chatter", "foreach": ["eu", "us"]},
            ],
        },
        tmp_path,
        password=SECRET,
    )
    assert lines.of("talk") == [
        (None, 1, "info", "line 1 of talk"),
        (None, 1, "info", "line 2 of talk"),
        (None, 1, "warning", "connecting with password ***"),
    ]
    assert {item for item, *_ in lines.of("each")} == {"eu", "us"}
    assert (("us", 1, "info", "line 3 of us")) in lines.of("each")
    assert all(SECRET not in text for *_, text in lines.lines)


def test_a_shell_task_s_output_is_kept_line_by_line_masked(tmp_path: Any) -> None:
    lines = run(
        {
            "variables": {"password": {"type": "str", "sensitive": True}},
            "tasks": [{"id": "sh", "shell": "echo one; echo two {{ vars.password }} >&2; printf 'three'"}],
        },
        tmp_path,
        password=SECRET,
    )
    assert [text for *_, text in lines.of("sh")] == ["one", "two ***", "three"]


def test_tries_are_kept_apart_and_a_traceback_is_part_of_its_line(tmp_path: Any) -> None:
    tries: list[int] = []

    def flaky(ctx: TaskContext) -> None:
        ctx.log.info("try starts")
        tries.append(1)
        if len(tries) == 1:
            try:
                raise ValueError(f"bad input near {ctx.vars['password']}")
            except ValueError:
                ctx.log.exception("first try failed")
                raise

    T.HOOKS["f"] = flaky
    lines = run(
        {
            "variables": {"password": {"sensitive": True}},
            "tasks": [{"id": "f", "python": "tests.support.tasks:step", "retries": 1, "retry_delay": 0}],
        },
        tmp_path,
        password=SECRET,
    )
    found = lines.of("f")
    assert [(n, level) for _, n, level, _ in found] == [(1, "info"), (1, "error"), (2, "info")]
    traceback = found[1][3]
    assert (
        traceback.startswith("first try failed\nTraceback") and "ValueError: bad input near ***" in traceback
    )
    assert SECRET not in traceback


def test_debug_lines_are_kept_only_when_the_node_logs_them(tmp_path: Any) -> None:
    def chatty(ctx: TaskContext) -> None:
        ctx.log.debug("noise")
        ctx.log.info("signal")

    T.HOOKS["d"] = chatty
    logger = logging.getLogger("orchestrator.task")
    before = logger.level
    logger.setLevel(logging.INFO)
    try:
        lines = run({"tasks": [{"id": "d", "python": "tests.support.tasks:step"}]}, tmp_path)
    finally:
        logger.setLevel(before)
    assert [text for *_, text in lines.of("d")] == ["signal"]


def test_the_reporter_appends_a_line_at_once_with_what_is_buffered() -> None:
    stream = StubStream()
    r = reporter(stream)
    r.task_started("a", None, 1)  # buffered for FLUSH_DELAY
    r.task_log("a", "eu", 2, "info", "hello")
    assert stream.calls == 1, "the line does not wait: the node may die the next moment"
    records = [record for _, record in stream.entries]
    assert [record.type for record in records] == ["task", "log"]
    assert records[1].detail == {"task": "a", "item": "eu", "try": 2, "level": "info", "message": "hello"}


def test_a_long_line_is_cut_and_says_so() -> None:
    stream = StubStream()
    reporter(stream).task_log("a", None, 1, "info", "x" * (MAX_LINE_CHARS + 10))
    message = stream.entries[0][1].detail["message"]
    assert message.startswith("x" * MAX_LINE_CHARS) and message.endswith("(10 more characters cut)")


def test_a_fenced_attempt_s_lines_are_refused_without_raising_into_the_task() -> None:
    stream = StubStream()
    r = reporter(stream)
    stream.fenced = True
    r.task_log("a", None, 1, "info", "refused")
    r.task_log("a", None, 1, "info", "not even tried")
    assert stream.entries == [] and stream.calls == 1


def test_lines_kept_while_redis_is_away_go_with_the_next_append() -> None:
    stream = StubStream()
    r = reporter(stream)
    stream.failing = 1
    r.task_log("a", None, 1, "info", "while away")
    r.task_log("a", None, 1, "info", "back")
    assert [record.detail["message"] for _, record in stream.entries] == ["while away", "back"]
