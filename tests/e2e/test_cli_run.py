"""``orchestrator run`` and ``orchestrator validate`` as real subprocesses, killed with real signals."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from checkpoints import FilesystemCheckpointStore
from tests.support import tasks as T
from tests.support.cli import ROOT, run_cli, start_cli, wait_until, write_package
from tests.support.seaweed import SeaweedServer

EXAMPLE = ROOT / "examples" / "orders_nightly.yaml"


def chain(log: Path, hold: Path, *, hold_task: str = "t3", units: bool = False) -> dict[str, Any]:
    """t1 -> ... -> t5; ``hold_task`` waits for the ``hold`` file (so the test can kill it there)."""
    tasks = []
    for n in range(1, 6):
        task_id = f"t{n}"
        params: dict[str, Any] = {"log": str(log)}
        fn = "step"
        if task_id == hold_task:
            params["hold"] = str(hold)
            if units:
                fn, params["units"], params["hold_at"] = "units", 10, 6
        tasks.append(
            {
                "id": task_id,
                "python": f"tests.support.tasks:{fn}",
                "params": params,
                "depends_on": [f"t{n - 1}"] if n > 1 else [],
            }
        )
    return {"name": "chain", "tasks": tasks}


def holding(log: Path, task: str) -> bool:
    return any(e["event"] == "holding" and e["task"] == task for e in T.read_log(log))


@pytest.mark.parametrize("units", [False, True], ids=["between-tasks", "mid-progress"])
def test_sigkilled_run_resumes_without_repeating_finished_tasks(tmp_path: Path, units: bool) -> None:
    log, hold = tmp_path / "log.jsonl", tmp_path / "release"
    package = write_package(tmp_path / "chain.yaml", chain(log, hold, units=units))
    process = start_cli("run", str(package), cwd=tmp_path)
    try:
        wait_until(lambda: holding(log, "t3"), timeout=60, what="t3 to start holding")
        os.killpg(process.pid, signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
    hold.touch()
    second = run_cli("run", str(package), "--json", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    result = json.loads(second.stdout)
    assert result["state"] == "succeeded" and result["skipped"] == ["t1", "t2"]
    entries = T.read_log(log)
    assert [T.count(entries, "end", f"t{n}") for n in range(1, 6)] == [1, 1, 1, 1, 1]
    assert [T.count(entries, "start", f"t{n}") for n in range(1, 6)] == [1, 1, 2, 1, 1]
    if units:
        done = [e["unit"] for e in entries if e["event"] == "unit"]
        assert done == list(range(10)), "units before the kill were not redone"
    run_dir = tmp_path / ".orchestrator/checkpoints/chain/local"
    assert {p.name for p in run_dir.iterdir()} == {"epoch", ".lock"}, "the checkpoint is deleted"


def test_sigkilled_run_resumes_from_its_s3_checkpoint(tmp_path: Path, seaweed: SeaweedServer) -> None:
    """``orchestrator run --checkpoint-dir s3://...`` SIGKILLed mid-run resumes from the bucket."""
    log, hold = tmp_path / "log.jsonl", tmp_path / "release"
    package = write_package(tmp_path / "chain.yaml", chain(log, hold, units=True))
    root = seaweed.root()
    env = seaweed.env()
    process = start_cli("run", str(package), "--checkpoint-dir", root, cwd=tmp_path, env=env)
    try:
        wait_until(lambda: holding(log, "t3"), timeout=60, what="t3 to start holding")
        saved = seaweed.store(root).load("chain", "local")
        assert saved is not None and set(saved.tasks) == {"t1", "t2"}
        os.killpg(process.pid, signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
    hold.touch()
    second = run_cli("run", str(package), "--json", "--checkpoint-dir", root, cwd=tmp_path, env=env)
    assert second.returncode == 0, second.stderr
    assert seaweed.secret_key not in second.stdout + second.stderr
    result = json.loads(second.stdout)
    assert result["state"] == "succeeded" and result["skipped"] == ["t1", "t2"]
    entries = T.read_log(log)
    assert [T.count(entries, "start", f"t{n}") for n in range(1, 6)] == [1, 1, 2, 1, 1]
    assert [e["unit"] for e in entries if e["event"] == "unit"] == list(range(10))
    store = seaweed.store(root)
    assert store.load("chain", "local") is None and store.epoch("chain", "local") == 2
    assert not (tmp_path / ".orchestrator/checkpoints").exists(), "nothing went to the local directory"


def test_sigterm_cancels_keeps_the_checkpoint_and_resumes(tmp_path: Path) -> None:
    log, hold = tmp_path / "log.jsonl", tmp_path / "release"
    package = write_package(tmp_path / "chain.yaml", chain(log, hold))
    process = start_cli("run", str(package), cwd=tmp_path)
    wait_until(lambda: holding(log, "t3"), timeout=60, what="t3 to start holding")
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 1
    store = FilesystemCheckpointStore(tmp_path / ".orchestrator/checkpoints")
    kept = store.load("chain", "local")
    assert kept is not None and sorted(kept.tasks) == ["t1", "t2"]
    hold.touch()
    second = run_cli("run", str(package), cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "resuming" in second.stdout and "2 finished task(s) skipped" in second.stdout
    assert [T.count(T.read_log(log), "end", f"t{n}") for n in range(1, 6)] == [1, 1, 1, 1, 1]


def test_example_package_loads_every_row_once(tmp_path: Path) -> None:
    result = run_cli("run", str(EXAMPLE), "--var", "rows=2000", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["state"] == "succeeded"
    with contextlib.closing(sqlite3.connect(tmp_path / ".orchestrator/example/warehouse.db")) as db:
        assert db.execute("SELECT COUNT(*), COUNT(DISTINCT order_id) FROM orders").fetchone() == (
            2000,
            2000,
        )
        executions = db.execute("SELECT task, item, COUNT(*) FROM executions GROUP BY 1, 2").fetchall()
    assert all(n == 1 for _, _, n in executions) and len(executions) == 6
    assert "loaded 2000 rows" in result.stderr  # the shell task's output reaches the log


def test_example_package_resumes_mid_partition_after_sigkill(tmp_path: Path) -> None:
    process = start_cli(
        "run", str(EXAMPLE), "--var", "rows=3000", "--var", "pace=0.05", "--quiet", cwd=tmp_path
    )
    store = FilesystemCheckpointStore(tmp_path / ".orchestrator/checkpoints")

    def mid_partition() -> bool:
        if not store.run_dir("orders_nightly", "local").exists():
            return False
        saved = store.load("orders_nightly", "local")
        return saved is not None and any('"offset"' in json.dumps(p) for p in saved.progress.values())

    try:
        wait_until(mid_partition, timeout=60, what="a partition's progress to be saved")
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
    resumed = run_cli("run", str(EXAMPLE), "--json", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    with contextlib.closing(sqlite3.connect(tmp_path / ".orchestrator/example/warehouse.db")) as db:
        assert db.execute("SELECT COUNT(*) FROM orders").fetchone() == (3000,)
        counts = dict(
            db.execute("SELECT task, COUNT(*) FROM executions WHERE item IS NULL GROUP BY 1").fetchall()
        )
        assert db.execute("SELECT orders FROM region_totals").fetchall()
    assert counts["prepare"] == 1 and counts["generate"] == 1 and counts["aggregate"] == 1


def test_validate_exit_codes(tmp_path: Path) -> None:
    ok = run_cli("validate", str(EXAMPLE), cwd=tmp_path)
    assert ok.returncode == 0 and "ok" in ok.stdout
    bad = write_package(
        tmp_path / "bad.yaml",
        {
            "name": "Bad Name",
            "tasks": [
                {"id": "a", "python": "m:f", "depends_on": ["b"], "colour": "red"},
                {"id": "b", "python": "m:f", "depends_on": ["a"]},
                {"id": "b", "shell": "true"},
            ],
        },
    )
    result = run_cli("validate", str(bad), cwd=tmp_path)
    assert result.returncode == 2
    for expected in (
        "name:",
        "tasks[0].colour: unknown key",
        "duplicate task id 'b'",
        "dependency cycle: a -> b -> a",
    ):
        assert expected in result.stderr


def test_validate_connect_checks_the_databases(tmp_path: Path) -> None:
    """``validate --connect``: the copy's tables, keys and columns checked on the database named
    by a ``--var``; every problem listed (exit 2), and a plain ``validate`` does not connect."""
    db = tmp_path / "etl.db"
    with contextlib.closing(sqlite3.connect(db)) as connection:
        connection.execute("CREATE TABLE src (id INTEGER NOT NULL PRIMARY KEY, name TEXT, extra TEXT)")
        connection.execute("CREATE TABLE dst (id INTEGER NOT NULL PRIMARY KEY, name TEXT)")
        connection.commit()

    def copy(task: str, source: str, destination: str) -> dict[str, Any]:
        ends = {"source": {"connection": "db", "table": source, "key": ["id"]}}
        return {"id": task, "copy": {**ends, "destination": {"connection": "db", "table": destination}}}

    package = write_package(
        tmp_path / "etl.yaml",
        {
            "name": "etl",
            "variables": {"db": {"type": "str", "default": "sqlite:///nowhere/at/all.db"}},
            "connections": {"db": {"url": "{{ vars.db }}"}},
            "tasks": [copy("wide", "src", "dst"), copy("missing", "nope", "dst"), copy("same", "dst", "dst")],
        },
    )
    assert run_cli("validate", str(package), cwd=tmp_path).returncode == 0
    result = run_cli("validate", "--connect", "--var", f"db=sqlite:///{db}", str(package), cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "2 errors" in result.stderr
    assert "task 'wide': copy.source: columns that do not match: 'extra'" in result.stderr
    assert "task 'missing': copy.source: table 'nope' not found on connection 'db'" in result.stderr
    with contextlib.closing(sqlite3.connect(db)) as connection:
        connection.execute("ALTER TABLE dst ADD COLUMN extra TEXT")
        connection.execute("CREATE TABLE nope (id INTEGER NOT NULL PRIMARY KEY, name TEXT)")
        connection.commit()
    ok = run_cli("validate", "--connect", "--var", f"db=sqlite:///{db}", str(package), cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "connections checked: db" in ok.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--var", "rows=many"], "cannot read 'many' as int"),
        (["--var", "nope=1"], "unknown variable 'nope'"),
        (["--restart", "always"], "no checkpoint"),
        (["--run-id", "../../etc"], "invalid run id"),
    ],
)
def test_run_refuses_bad_input_with_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    result = run_cli("run", str(EXAMPLE), *args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert not (tmp_path / ".orchestrator/example").exists(), "nothing ran"


def test_run_of_an_invalid_package_exits_2(tmp_path: Path) -> None:
    bad = write_package(tmp_path / "bad.yaml", {"name": "x", "tasks": [{"id": "a"}]})
    result = run_cli("run", str(bad), cwd=tmp_path)
    assert result.returncode == 2 and "tasks[0]: a task needs 'python'" in result.stderr


def test_failed_package_exits_1_with_the_task_error(tmp_path: Path) -> None:
    package = write_package(
        tmp_path / "fail.yaml",
        {"name": "fails", "tasks": [{"id": "boom", "shell": "echo broken pipe >&2; exit 4"}]},
    )
    result = run_cli("run", str(package), "--json", cwd=tmp_path)
    assert result.returncode == 1
    body = json.loads(result.stdout)
    assert body["state"] == "failed" and "status 4" in body["error"] and body["checkpoint_kept"]


def test_changed_package_refuses_the_checkpoint_with_exit_2(tmp_path: Path) -> None:
    definition = {
        "name": "changes",
        "tasks": [
            {"id": "a", "shell": "true"},
            {"id": "b", "shell": "exit 1", "depends_on": ["a"]},
        ],
    }
    package = write_package(tmp_path / "p.yaml", definition)
    assert run_cli("run", str(package), cwd=tmp_path).returncode == 1
    definition["tasks"][1]["shell"] = "true"
    write_package(package, definition)
    result = run_cli("run", str(package), cwd=tmp_path)
    assert result.returncode == 2 and "package changed since the checkpoint was saved" in result.stderr
    assert run_cli("run", str(package), "--restart", "never", cwd=tmp_path).returncode == 0


def test_submit_refuses_a_missing_required_variable_before_queueing(tmp_path: Path) -> None:
    package = write_package(
        tmp_path / "needs.yaml",
        {
            "name": "needs",
            "variables": {"password": {"sensitive": True}},
            "tasks": [{"id": "a", "shell": "true"}],
        },
    )
    env = {"ORCHESTRATOR_BROKER_URL": "redis://127.0.0.1:1/0"}  # never reached: refused before sending
    result = run_cli("submit", str(package), cwd=tmp_path, env=env)
    assert result.returncode == 2, result.stderr
    assert "required variable(s) without a value: password" in result.stderr


def unwritable_root(tmp_path: Path) -> Path:
    """A checkpoint root that cannot be a directory: it lies under a plain file (even root fails)."""
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a directory\n")
    return blocker / "checkpoints"


def test_run_names_a_checkpoint_directory_it_cannot_write(tmp_path: Path) -> None:
    root = unwritable_root(tmp_path)
    result = run_cli("run", str(EXAMPLE), "--checkpoint-dir", str(root), cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert f"error: checkpoint root '{root}' is not a directory this process can write" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / ".orchestrator/example").exists(), "no task ran"


@pytest.mark.parametrize("command", [["worker", "--node", "root-check"], ["scheduler"]])
def test_nodes_and_schedulers_stop_at_start_on_a_checkpoint_root_they_cannot_write(
    tmp_path: Path, redis_url: str, command: list[str]
) -> None:
    root = unwritable_root(tmp_path)
    env = {
        "ORCHESTRATOR_CHECKPOINT_ROOT": str(root),
        "ORCHESTRATOR_BROKER_URL": redis_url,
        "ORCHESTRATOR_DATABASE_URL": f"sqlite:///{tmp_path / 'state.db'}",
    }
    result = run_cli(*command, cwd=tmp_path, env=env, timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"checkpoint root '{root}' is not a directory this process can write" in result.stderr
    assert "Traceback" not in result.stderr
