"""Log lines carry the run's context and never a sensitive value."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from checkpoints import InMemoryCheckpointStore
from orchestrator.observability.logs import ContextFilter, JsonFormatter, configure_logging, log_context
from orchestrator.observability.masking import Masker
from orchestrator.packages.validation import parse_package
from tests.support import tasks as T
from workers.context import TaskContext
from workers.executor import ExecutionOptions, RunRequest, execute


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield stream
    root.removeHandler(handler)
    root.setLevel(old_level)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_context_fields_reach_every_line(json_lines: io.StringIO) -> None:
    log = logging.getLogger("test.logs")
    with log_context(run_id="r-1", attempt=2, node="node-7"):
        log.info("outer")
        with log_context(task="load"):
            log.warning("inner %s", "value")
    log.info("outside")
    outer, inner, outside = lines(json_lines)
    assert outer["run_id"] == "r-1" and outer["attempt"] == 2 and outer["node"] == "node-7"
    assert "task" not in outer
    assert inner["task"] == "load" and inner["message"] == "inner value" and inner["level"] == "warning"
    assert not {"run_id", "attempt", "node", "task"} & set(outside)


def test_the_context_masker_masks_messages_and_tracebacks(json_lines: io.StringIO) -> None:
    log = logging.getLogger("test.logs")
    with log_context(mask=Masker(["hunter2-secret"])):
        log.info("connecting with %s", "hunter2-secret")
        try:
            raise RuntimeError("login failed for hunter2-secret")
        except RuntimeError:
            log.exception("task crashed")
    text = json_lines.getvalue()
    assert "hunter2-secret" not in text and text.count("***") >= 2


def test_a_run_logs_its_task_lines_with_context_and_masked(
    json_lines: io.StringIO, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(T.LOG_ENV, str(tmp_path / "log.jsonl"))

    def chatty(ctx: TaskContext) -> None:
        logging.getLogger("user.task").info("using password %s", ctx.vars["password"])
        ctx.log.info("via the task logger: %s", ctx.vars["password"])

    T.HOOKS["a"] = chatty
    try:
        package = parse_package(
            {
                "name": "p",
                "variables": {"password": {"sensitive": True}},
                "tasks": [
                    {"id": "a", "python": "tests.support.tasks:step"},
                    {"id": "b", "shell": "echo the password is {{ vars.password }}", "depends_on": ["a"]},
                ],
            }
        )
        result = execute(
            RunRequest(package, "r-9", {"password": "pa55-w0rd-x"}, epoch=3, attempt=3),
            ExecutionOptions(store=InMemoryCheckpointStore()),
        )
    finally:
        T.HOOKS.clear()
    assert result.succeeded
    records = lines(json_lines)
    assert "pa55-w0rd-x" not in json_lines.getvalue()
    task_lines = [r for r in records if r.get("task") in ("a", "b")]
    assert {r["task"] for r in task_lines} == {"a", "b"}
    assert all(r["run_id"] == "r-9" and r["attempt"] == 3 for r in task_lines)
    assert any("the password is ***" in r["message"] for r in task_lines)


def test_configure_logging_json_writes_one_object_per_line(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("INFO", json_lines=True)
        with log_context(run_id="r-2", node="n"):
            logging.getLogger("x").info("hello")
        record = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
        assert record["message"] == "hello" and record["run_id"] == "r-2" and record["node"] == "n"
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
