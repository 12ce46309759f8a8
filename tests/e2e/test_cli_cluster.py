"""The cluster commands of the CLI against one ``orchestrator up --workers 2``, all as real subprocesses.

One local cluster serves the module: an embedded Redis, a scheduler and two
worker nodes started by ``orchestrator up`` in a temporary directory. Every
other command runs from that directory with no broker or database flag and no
``ORCHESTRATOR_*`` variable, so it finds the cluster through
``.orchestrator/cluster.json`` and the default SQLite database. Tasks log
their executions to one JSON-lines file per package (the ``log`` param),
which is how re-runs are counted.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from checkpoints import FilesystemCheckpointStore
from tests.support import tasks as T
from tests.support.cli import cli_env, orchestrator_bin, run_cli, wait_until, write_package

NODES = {"node-1", "node-2"}
STATUS_KEYS = {"run_id", "package", "state", "attempt", "restarts", "node", "tasks", "error"}
RUN_ID = re.compile(r"[a-z0-9][a-z0-9_-]*-[0-9a-f]{12}")
STOP_DEADLINE = 45.0  # `up` gives members 10 s to stop, then Redis 10 s; slack for a loaded machine


@dataclass
class LocalCluster:
    """The directory of a running ``orchestrator up`` and the CLI run from it."""

    dir: Path
    up: subprocess.Popen[bytes]
    output: Path

    @property
    def state_dir(self) -> Path:
        return self.dir / ".orchestrator"

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, cwd=self.dir, timeout=60)

    def json(self, *args: str) -> Any:
        result = self.cli(*args, "--json")
        assert result.returncode == 0, f"orchestrator {' '.join(args)} --json:\n{result.stderr}"
        return json.loads(result.stdout)

    def status(self, run_id: str) -> dict[str, Any]:
        status: dict[str, Any] = self.json("status", run_id)
        return status

    def wait_state(self, run_id: str, *states: str, timeout: float = 30) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            status = self.status(run_id)
            return status if status["state"] in states else None

        return wait_until(
            reached, timeout=timeout, what=f"run {run_id} to be {'/'.join(states)}\n{self.tail()}"
        )

    def package(self, name: str, tasks: list[dict[str, Any]], **extra: Any) -> Path:
        return write_package(self.dir / f"{name}.yaml", {"name": name, **extra, "tasks": tasks})

    def log(self, name: str) -> Path:
        return self.dir / f"{name}.jsonl"

    def ready_nodes(self) -> set[str]:
        result = self.cli("nodes", "--json")
        if result.returncode != 0:  # no cluster.json yet, or Redis not answering yet
            return set()
        return {row["node"] for row in json.loads(result.stdout) if row["state"] == "alive" and row["ready"]}

    def tail(self, lines: int = 30) -> str:
        text = self.output.read_text(errors="replace").splitlines()[-lines:]
        return "--- orchestrator up ---\n" + "\n".join(text)


@dataclass
class Submitted:
    """A run submitted with ``--wait`` by a module fixture: the command's outcome and the task log."""

    result: subprocess.CompletedProcess[str]
    run_id: str
    log: Path


def task(
    task_id: str, log: Path, fn: str = "step", after: str | None = None, **params: Any
) -> dict[str, Any]:
    return {
        "id": task_id,
        "python": f"tests.support.tasks:{fn}",
        "params": {"log": str(log), **params},
        "depends_on": [after] if after else [],
    }


def starts(log: Path, task_id: str) -> int:
    return T.count(T.read_log(log), "start", task_id)


def holding(log: Path, task_id: str) -> bool:
    return any(e["event"] == "holding" and e["task"] == task_id for e in T.read_log(log))


def table_rows(output: str) -> list[list[str]]:
    """The body rows of a rich table as stripped cells."""
    return [[cell.strip() for cell in line.split("│")] for line in output.splitlines() if "│" in line]


def running(pids: set[int]) -> list[str]:
    """Live (non-zombie) processes that are one of ``pids`` or in a process group one of them leads."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # exited while we looked
            continue
        state, _ppid, pgrp = text.rpartition(")")[2].split()[:3]
        pid = int(stat.parent.name)
        if state != "Z" and (pid in pids or int(pgrp) in pids):
            found.append(f"{pid} (group {pgrp}): {text.split(')')[0].split('(', 1)[-1]}")
    return found


def kill_groups(pids: set[int]) -> None:
    for pid in pids:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def member_pids(state_dir: Path) -> set[int]:
    """The scheduler, the nodes (each its own process group) and the embedded Redis."""
    members = json.loads((state_dir / "nodes.json").read_text())
    redis = json.loads((state_dir / "cluster.json").read_text())
    return {int(m["pid"]) for m in members} | {int(redis["pid"])}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """``orchestrator up --workers 2`` in a fresh directory; on teardown Ctrl-C must stop all of it."""
    directory = tmp_path_factory.mktemp("local-cluster")
    with pytest.MonkeyPatch.context() as env:
        for name in list(os.environ):
            if name.startswith("ORCHESTRATOR_"):  # the embedded broker and default database are tested
                env.delenv(name)
        output = directory / "up.log"
        with output.open("wb") as sink:  # a file, not a pipe: nobody drains it while tests run
            up = subprocess.Popen(
                [orchestrator_bin(), "up", "--workers", "2"],
                cwd=directory,
                env=cli_env(),
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        harness = LocalCluster(directory, up, output)
        pids: set[int] = set()
        try:
            wait_until(
                lambda: up.poll() is not None or harness.ready_nodes() == NODES,
                timeout=60,
                what=f"2 alive nodes\n{harness.tail()}",
            )
            assert up.poll() is None, f"orchestrator up exited with {up.returncode}\n{harness.tail()}"
            pids = member_pids(harness.state_dir)
        except BaseException:
            kill_groups({up.pid, *pids})
            up.wait(timeout=30)
            raise
        yield harness
        stop_cluster(harness, pids)


def stop_cluster(harness: LocalCluster, pids: set[int]) -> None:
    up = harness.up
    up.send_signal(signal.SIGINT)
    try:
        code = up.wait(timeout=STOP_DEADLINE)
    except subprocess.TimeoutExpired:
        kill_groups({up.pid, *pids})
        up.wait(timeout=30)
        pytest.fail(f"orchestrator up did not stop within {STOP_DEADLINE} s of SIGINT\n{harness.tail()}")
    try:
        wait_until(lambda: not running(pids), timeout=5, what="the cluster's processes to be gone")
    except AssertionError:
        left = running(pids)
        kill_groups(pids)
        pytest.fail(f"orchestrator up exited but left processes behind: {left}\n{harness.tail()}")
    assert code == 0, harness.tail()
    assert "stopping the local cluster" in harness.output.read_text()
    assert not (harness.state_dir / "nodes.json").exists()
    assert not (harness.state_dir / "cluster.json").exists()


@pytest.fixture(scope="module")
def succeeded(cluster: LocalCluster) -> Submitted:
    """``submit --var n=3 --wait --json`` of a two-task package whose first task runs n units."""
    log = cluster.log("count")
    package = cluster.package(
        "count",
        [task("count", log, "units", units="{{ vars.n }}"), task("done", log, after="count")],
        variables={"n": {"type": "int", "default": 1}},
    )
    result = cluster.cli("submit", str(package), "--var", "n=3", "--wait", "--json")
    assert result.returncode == 0, result.stdout + result.stderr + cluster.tail()
    return Submitted(result, json.loads(result.stdout)["run_id"], log)


@pytest.fixture(scope="module")
def failed(cluster: LocalCluster) -> Submitted:
    """``submit --wait`` (human output) of a package whose middle task raises."""
    log = cluster.log("failing")
    package = cluster.package(
        "failing", [task("a", log), task("b", log, after="a", fail=True), task("c", log, after="b")]
    )
    result = cluster.cli("submit", str(package), "--wait")
    found = re.search(r"^run (\S+) of failing", result.stdout, re.MULTILINE)
    assert found, result.stdout + result.stderr
    return Submitted(result, found[1], log)


def test_nodes_shows_both_nodes_alive_with_concurrency_and_heartbeat(cluster: LocalCluster) -> None:
    rows = cluster.json("nodes")
    assert sorted(row["node"] for row in rows) == sorted(NODES)
    now = datetime.now(UTC)
    for row in rows:
        assert row["state"] == "alive" and row["concurrency"] == 2 and row["ready"] is True, row
        assert now - datetime.fromisoformat(row["last_heartbeat"]) < timedelta(seconds=10), row
    table = {cells[0]: cells for cells in table_rows(cluster.cli("nodes").stdout)}
    assert {name: cells[1:3] for name, cells in table.items()} == {n: ["alive", "2"] for n in NODES}
    assert {name: cells[-1] for name, cells in table.items()} == {n: "yes" for n in NODES}


def test_submit_prints_the_run_id_at_once(cluster: LocalCluster) -> None:
    log, release = cluster.log("hold1"), cluster.dir / "hold1.release"
    package = cluster.package("hold1", [task("wait", log, hold=str(release))])
    try:
        submitted = cluster.cli("submit", str(package))
        assert submitted.returncode == 0, submitted.stderr
        run_id = submitted.stdout.strip()
        assert submitted.stdout.splitlines() == [run_id] and RUN_ID.fullmatch(run_id), submitted.stdout
        assert run_id.startswith("hold1-")
        # The command returned while its run cannot finish: the task waits for the release file.
        wait_until(lambda: holding(log, "wait"), timeout=30, what=f"the task to hold\n{cluster.tail()}")
        status = cluster.status(run_id)
        assert (status["state"], status["tasks"], status["attempt"]) == ("running", {"wait": "running"}, 1)
        assert status["node"] in NODES
        runs = {row["node"]: row["runs"] for row in cluster.json("nodes")}
        assert runs[status["node"]] == [run_id] and run_id not in runs[(NODES - {status["node"]}).pop()]
    finally:
        release.touch()
    assert cluster.wait_state(run_id, "succeeded")["tasks"] == {"wait": "succeeded"}
    assert starts(log, "wait") == 1


def test_submit_json_prints_one_object_with_the_run_id(cluster: LocalCluster) -> None:
    log = cluster.log("quick")
    result = cluster.cli("submit", str(cluster.package("quick", [task("only", log)])), "--json")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    body = json.loads(lines[0])
    assert RUN_ID.fullmatch(body["run_id"]) and body["package"] == "quick"
    assert cluster.wait_state(body["run_id"], "succeeded")["tasks"] == {"only": "succeeded"}
    assert starts(log, "only") == 1


def test_submit_wait_exits_0_once_the_run_succeeded(cluster: LocalCluster) -> None:
    log = cluster.log("waited")
    result = cluster.cli("submit", str(cluster.package("waited", [task("only", log)])), "--wait")
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"^run waited-[0-9a-f]{12} of waited: succeeded$", result.stdout, re.MULTILINE)
    assert [e["event"] for e in T.read_log(log)] == ["start", "end"]


def test_submit_wait_json_prints_the_final_status(succeeded: Submitted) -> None:
    lines = succeeded.result.stdout.splitlines()
    assert len(lines) == 1, succeeded.result.stdout
    status = json.loads(lines[0])
    assert STATUS_KEYS <= status.keys()
    assert status["run_id"] == succeeded.run_id and status["package"] == "count"
    assert (status["state"], status["attempt"], status["restarts"], status["error"]) == (
        "succeeded",
        1,
        0,
        None,
    )
    assert status["node"] in NODES
    assert status["tasks"] == {"count": "succeeded", "done": "succeeded"}
    units = [e["unit"] for e in T.read_log(succeeded.log) if e["event"] == "unit"]
    assert units == [0, 1, 2], "--var n=3 did not reach the worker"


def test_submit_wait_of_a_failing_package_exits_1_naming_the_error(
    cluster: LocalCluster, failed: Submitted
) -> None:
    assert failed.result.returncode == 1
    assert "error: task 'b' failed: RuntimeError: b failed on purpose" in failed.result.stdout
    status = cluster.status(failed.run_id)
    assert status["state"] == "failed"
    assert status["tasks"] == {"a": "succeeded", "b": "failed", "c": "upstream_failed"}
    assert "b failed on purpose" in status["error"]
    assert (starts(failed.log, "a"), starts(failed.log, "b"), starts(failed.log, "c")) == (1, 1, 0)


def test_invalid_submissions_exit_2_list_every_error_and_queue_nothing(cluster: LocalCluster) -> None:
    before = {row["run_id"] for row in cluster.json("runs")}
    step = "tests.support.tasks:step"
    bad = write_package(
        cluster.dir / "bad.yaml",
        {
            "name": "Bad Name",
            "bogus": 1,
            "tasks": [
                {"id": "a", "python": step, "retries": "many"},
                {"id": "b", "python": step, "depends_on": ["nope"]},
            ],
        },
    )
    result = cluster.cli("submit", str(bad))
    assert result.returncode == 2 and result.stdout == "", result.stdout + result.stderr
    assert "4 errors" in result.stderr
    for path in ("name", "bogus", "tasks[0].retries", "tasks[1].depends_on[0]"):
        assert f"  - {path}: " in result.stderr, path

    log = cluster.log("typed")
    typed = cluster.package("typed", [task("t", log)], variables={"n": {"type": "int", "default": 0}})
    for assignment, message in [
        ("n=abc", "variable 'n'"),
        ("zz=1", "unknown variable 'zz'"),
        ("n", "NAME=VALUE"),
    ]:
        result = cluster.cli("submit", str(typed), "--var", assignment)
        assert result.returncode == 2 and message in result.stderr, (assignment, result.stderr)

    # The scheduler takes submissions in order: once this one ran, any earlier one would be recorded.
    fence = cluster.cli("submit", str(typed), "--var", "n=1", "--wait", "--json")
    assert fence.returncode == 0, fence.stderr
    after = {row["run_id"] for row in cluster.json("runs")}
    assert after == before | {json.loads(fence.stdout)["run_id"]}
    assert starts(log, "t") == 1


def test_error_messages_are_printed_verbatim(cluster: LocalCluster) -> None:
    bad = write_package(
        cluster.dir / "badname.yaml", {"name": "Bad Name", "tasks": [task("a", cluster.log("x"))]}
    )
    result = cluster.cli("submit", str(bad))
    assert result.returncode == 2
    assert "a package name is [a-z0-9][a-z0-9_-]{0,63}" in result.stderr


def test_status_json_is_the_final_status_and_status_prints_it(
    cluster: LocalCluster, succeeded: Submitted
) -> None:
    final = json.loads(succeeded.result.stdout)
    assert cluster.status(succeeded.run_id) == final
    text = cluster.cli("status", succeeded.run_id)
    assert text.returncode == 0, text.stderr
    assert f"run {succeeded.run_id} of count: succeeded" in text.stdout
    assert f"restarts 0/{final['max_restarts']}, node {final['node']}" in text.stdout
    assert {cells[0]: cells[1] for cells in table_rows(text.stdout)} == final["tasks"]


def test_unknown_run_ids_fail_clearly(cluster: LocalCluster) -> None:
    for command in ("status", "events", "logs"):
        result = cluster.cli(command, "no-such-run")
        assert result.returncode != 0 and result.stdout == "", (command, result.stdout)
        assert "no run 'no-such-run'" in result.stderr and "Traceback" not in result.stderr, command


def test_runs_lists_runs_newest_first_and_filters_by_state(
    cluster: LocalCluster, succeeded: Submitted, failed: Submitted
) -> None:
    rows = cluster.json("runs")
    submitted = [row["submitted_at"] for row in rows]
    assert submitted == sorted(submitted, reverse=True)
    final = json.loads(succeeded.result.stdout)
    by_id = {row["run_id"]: row for row in rows}
    assert by_id[succeeded.run_id] == {
        "run_id": succeeded.run_id,
        "package": "count",
        "state": "succeeded",
        "attempt": 1,
        "restarts": 0,
        "node": final["node"],
        "submitted_at": final["submitted_at"],
        "started_at": final["started_at"],
        "finished_at": final["finished_at"],
        "duration_seconds": round(
            (
                datetime.fromisoformat(final["finished_at"]) - datetime.fromisoformat(final["started_at"])
            ).total_seconds(),
            3,
        ),
    }
    assert by_id[failed.run_id]["state"] == "failed"
    for state, present, absent in [("succeeded", succeeded, failed), ("failed", failed, succeeded)]:
        filtered = cluster.json("runs", "--state", state)
        ids = {row["run_id"] for row in filtered}
        assert {row["state"] for row in filtered} == {state}
        assert present.run_id in ids and absent.run_id not in ids
    table = {cells[0]: cells for cells in table_rows(cluster.cli("runs", "--state", "succeeded").stdout)}
    assert table[succeeded.run_id][:6] == [succeeded.run_id, "count", "succeeded", "1", "0", final["node"]]
    # Piped with no width given (Rich would take 80 columns), and in 80 columns: ids stay whole.
    for columns in ("", "80"):
        shown = run_cli("runs", cwd=cluster.dir, env={"COLUMNS": columns}).stdout
        assert {row[0] for row in table_rows(shown)} >= {succeeded.run_id, failed.run_id}, shown


def test_up_serves_the_web_ui_with_the_rows_of_runs_json(cluster: LocalCluster, succeeded: Submitted) -> None:
    found = wait_until(
        lambda: re.search(
            r"^web UI at (http://127\.0\.0\.1:\d+/)$", cluster.output.read_text(), re.MULTILINE
        ),
        timeout=30,
        what=f"up to print the UI's address\n{cluster.tail()}",
    )
    with urllib.request.urlopen(found[1] + "api/runs?limit=500", timeout=30) as response:
        served = json.loads(response.read())
    cli = {row["run_id"]: row for row in cluster.json("runs")}
    api = {row["run_id"]: row for row in served["runs"]}
    assert api.keys() == cli.keys() and api[succeeded.run_id] == cli[succeeded.run_id]
    assert all(api[run_id].keys() == cli[run_id].keys() for run_id in api)  # a running one's duration grows
    with urllib.request.urlopen(found[1] + f"runs/{succeeded.run_id}", timeout=30) as response:
        page = response.read().decode()
    assert 'data-task="count" data-state="succeeded"' in page and 'data-task="done"' in page


def test_events_show_the_timeline_in_order(cluster: LocalCluster, succeeded: Submitted) -> None:
    kinds = [
        "submitted",
        "dispatched",
        "claimed",
        "task_done",
        "checkpoint_saved",
        "task_done",
        "checkpoint_saved",
        "finished",
    ]
    node = json.loads(succeeded.result.stdout)["node"]
    events = cluster.json("events", succeeded.run_id)
    assert [e["kind"] for e in events] == kinds
    times = [datetime.fromisoformat(e["at"]) for e in events]
    assert times == sorted(times)
    assert [e["node"] for e in events[2:]] == [node] * 6
    assert [e["detail"]["task"] for e in events if e["kind"] == "task_done"] == ["count", "done"]
    assert events[-1]["detail"]["state"] == "succeeded"

    table = cluster.cli("events", succeeded.run_id)
    assert table.returncode == 0, table.stderr
    rows = table_rows(table.stdout)
    assert [cells[1] for cells in rows] == kinds
    assert all(re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3}", cells[0]) for cells in rows), rows
    assert [cells[3] for cells in rows] == ["-", "-"] + [node] * 6


def test_cancel_keeps_the_checkpoint_and_resume_finishes_from_it(cluster: LocalCluster) -> None:
    log, release = cluster.log("held"), cluster.dir / "held.release"
    package = cluster.package(
        "held",
        [task("t1", log), task("t2", log, after="t1", hold=str(release)), task("t3", log, after="t2")],
    )
    try:
        submitted = cluster.cli("submit", str(package))
        assert submitted.returncode == 0, submitted.stderr
        run_id = submitted.stdout.strip()
        wait_until(lambda: holding(log, "t2"), timeout=30, what=f"t2 to hold\n{cluster.tail()}")
        cancelled = cluster.cli("cancel", run_id)
        assert cancelled.returncode == 0, cancelled.stderr
        assert f"cancellation of {run_id} requested (state running)" in cancelled.stdout
        # t2 does not poll for cancellation; release it only once its node has seen the request,
        # else the run could legitimately finish before the cancellation reaches it. A task that
        # returns after the stop was requested is not recorded as done: it runs again on resume.
        wait_until(
            lambda: f"cancellation of run {run_id} requested" in cluster.output.read_text(),
            timeout=15,
            what=f"the node to see the cancellation\n{cluster.tail()}",
        )
    finally:
        release.touch()
    status = cluster.wait_state(run_id, "cancelled", "succeeded", "failed")
    assert status["state"] == "cancelled", status
    assert status["tasks"] == {"t1": "succeeded", "t2": "cancelled", "t3": "cancelled"}
    assert "checkpoint kept" in status["error"]
    kept = FilesystemCheckpointStore(cluster.state_dir / "checkpoints").load("held", run_id)
    assert kept is not None
    assert kept.run_id == run_id and sorted(kept.tasks) == ["t1"]
    assert starts(log, "t3") == 0

    resumed = cluster.cli("resume", run_id)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resume of {run_id} requested" in resumed.stdout
    status = cluster.wait_state(run_id, "succeeded", "failed", "cancelled")
    assert (status["state"], status["attempt"], status["error"]) == ("succeeded", 2, None)
    assert status["tasks"] == {"t1": "succeeded", "t2": "succeeded", "t3": "succeeded"}
    entries = T.read_log(log)
    assert [T.count(entries, "start", t) for t in ("t1", "t2", "t3")] == [1, 2, 1]
    assert [e["epoch"] for e in entries if e["task"] == "t3"] == [2, 2]
    events = cluster.json("events", run_id)
    assert [e["detail"].get("skipped") for e in events if e["kind"] == "resumed"] == [1]
    run_dir = cluster.state_dir / "checkpoints" / "held" / run_id
    assert {p.name for p in run_dir.iterdir()} == {"epoch", ".lock"}, (
        "the checkpoint outlived the run's success"
    )


def test_cancel_does_not_record_a_cut_short_task_as_done(cluster: LocalCluster) -> None:
    log = cluster.log("nap")
    submitted = cluster.cli("submit", str(cluster.package("nap", [task("nap", log, "sleepy", seconds=20)])))
    assert submitted.returncode == 0, submitted.stderr
    run_id = submitted.stdout.strip()
    wait_until(lambda: starts(log, "nap") == 1, timeout=30, what=f"nap to start\n{cluster.tail()}")
    assert cluster.cli("cancel", run_id).returncode == 0
    status = cluster.wait_state(run_id, "cancelled", "succeeded", "failed")
    assert [e.get("cancelled") for e in T.read_log(log) if e["event"] == "end"] == [True]
    assert (status["state"], status["tasks"]) == ("cancelled", {"nap": "cancelled"})


def test_resume_of_a_succeeded_run_is_refused(cluster: LocalCluster, succeeded: Submitted) -> None:
    result = cluster.cli("resume", succeeded.run_id)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert (
        f"run '{succeeded.run_id}' is succeeded: only failed or cancelled runs can be resumed"
        in result.stderr
    )
    assert "resume_requested" not in [e["kind"] for e in cluster.json("events", succeeded.run_id)]
    assert cluster.status(succeeded.run_id)["attempt"] == 1


def test_logs_prints_a_run_s_task_lines_and_follows_a_running_one(cluster: LocalCluster) -> None:
    log, hold = cluster.log("talk"), cluster.dir / "talk-release"
    package = cluster.package(
        "talk",
        [
            {**task("talk", log, "chatter", lines=3, hold=str(hold)), "foreach": ["eu", "us"]},
            {
                "id": "shout",
                "shell": "echo from the shell; printf '\\033[31m<red>\\n' >&2",
                "depends_on": ["talk"],
            },
        ],
        variables={"password": {"type": "str", "sensitive": True, "default": "pa55-in-clear"}},
    )
    run_id = cluster.cli("submit", str(package)).stdout.strip()
    assert RUN_ID.fullmatch(run_id), run_id
    wait_until(
        lambda: any(e["event"] == "logged" for e in T.read_log(log)), timeout=60, what="the first item"
    )
    errors = cluster.dir / "talk-follow.err"
    with errors.open("w") as stderr:
        follow = subprocess.Popen(
            [orchestrator_bin(), "logs", run_id, "--follow"],
            cwd=cluster.dir,
            env=cli_env(),
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    # The rest is read through the same buffered reader as the first line (communicate() would
    # read the pipe beneath it and miss what readline() buffered); the timer is the deadline.
    deadline = threading.Timer(60, follow.kill)
    deadline.start()
    try:
        assert follow.stdout is not None
        first = follow.stdout.readline()
        assert "talk[eu] #1 info    line 1 of eu" in first, first
        hold.touch()
        out = follow.stdout.read()
        follow.wait()
    finally:
        deadline.cancel()
        if follow.poll() is None:
            follow.kill()
            follow.wait()
        if follow.stdout is not None:
            follow.stdout.close()
    err = errors.read_text()
    assert follow.returncode == 0, err  # the run succeeded, and --follow ended with it (not killed)
    followed = [first.rstrip("\n"), *out.splitlines()]
    assert followed[-2].endswith(" shout #1 info    from the shell"), followed
    assert followed[-1].endswith("shout #1 info    \\x1b[31m<red>"), "a terminal escape is shown, not obeyed"
    assert sum("password ***" in line for line in followed) == 2 and "pa55" not in out

    printed = cluster.cli("logs", run_id)
    assert printed.returncode == 0 and printed.stdout.splitlines() == followed
    rows = [json.loads(line) for line in cluster.cli("logs", run_id, "--json").stdout.splitlines()]
    assert {(r["task"], r["item"], r["attempt"]) for r in rows} == {
        ("talk", "eu", 1),
        ("talk", "us", 1),
        ("shout", None, 1),
    }
    assert [r["message"] for r in rows if r["item"] == "us"] == [
        "line 1 of us",
        "line 2 of us",
        "line 3 of us",
        "connecting with password ***",
    ]
    only = cluster.cli("logs", run_id, "--task", "shout", "--json").stdout.splitlines()
    assert [json.loads(line)["message"] for line in only] == ["from the shell", "\x1b[31m<red>"]
    assert cluster.cli("logs", run_id, "--attempt", "2").stdout == ""
    wrong = cluster.cli("logs", run_id, "--task", "nope")
    assert wrong.returncode == 2 and "has no task 'nope'" in wrong.stderr
