"""Infrastructure faults under a running package, with real processes.

* PostgreSQL goes down mid-run (a private server of this test, never the shared one): the
  worker's SQL write fails, its lease expires, the scheduler's ticks fail and retry, and once
  the database is back the run is resubmitted and finishes with no finished work repeated.
* The checkpoint storage fails (a tiny tmpfs as the checkpoint root, filled up or remounted
  read-only; root ignores file modes): the run fails with an error naming the cause, and
  once the fault is gone ``orchestrator resume`` finishes it from the last good checkpoint.
"""

from __future__ import annotations

import contextlib
import errno
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.state.states import RunState
from tests.integration.test_failover import FAST, HOLD_AT, finished, holding, start, ten_tasks
from tests.support import tasks as T
from tests.support.cli import run_cli, wait_until
from tests.support.cluster import Cluster
from tests.support.servers import PrivatePostgres, Unavailable

pytestmark = pytest.mark.timeout(150)


def log_has(cluster: Cluster, name: str, text: str) -> bool:
    return text in (cluster.tmp / f"{name}.log").read_text(errors="replace")


def assert_no_finished_work_repeated(cluster: Cluster) -> None:
    entries = cluster.entries()
    for n in range(1, 11):
        if n != 6:
            assert T.count(entries, "end", f"t{n}") == 1, (
                f"t{n} ran to its end {T.count(entries, 'end', f't{n}')} times"
            )
    assert [e["unit"] for e in entries if e["event"] == "saved"] == list(range(8)), "a saved unit ran again"


# -- PostgreSQL ----------------------------------------------------------------------------------


@pytest.fixture
def postgres() -> Iterator[PrivatePostgres]:
    with contextlib.ExitStack() as stack:
        try:
            server = stack.enter_context(PrivatePostgres())
        except Unavailable as exc:
            pytest.skip(f"cannot run a private PostgreSQL here: {exc}")
        yield server


def test_postgresql_down_mid_run_then_back(tmp_path: Path, redis_url: str, postgres: PrivatePostgres) -> None:
    cluster = Cluster(tmp_path, redis_url, postgres.url)
    cluster.overrides.update(FAST)
    try:
        start(cluster, nodes=2)
        hold = tmp_path / "release"
        run_id = cluster.client.submit(ten_tasks(hold))
        wait_until(lambda: holding(cluster, 1), timeout=60, what=f"t6 to hold\n{cluster.tail()}")
        node = cluster.client.status(run_id)["node"]
        cluster.services.close()  # the test's own connections die with the server too

        postgres.down()
        hold.touch()  # t6 finishes; recording it in SQL fails
        wait_until(
            lambda: log_has(cluster, node, "the run will be resubmitted when its lease expires"),
            timeout=60,
            what=f"the attempt's SQL write to fail\n{cluster.tail()}",
        )
        wait_until(
            lambda: cluster.services.liveness.epoch(run_id) >= 2,
            timeout=60,
            what=f"the scheduler to fence the expired lease while SQL is down\n{cluster.tail()}",
        )
        wait_until(
            lambda: log_has(cluster, "scheduler-1", "scheduler tick failed (retrying)"),
            timeout=60,
            what=f"a scheduler tick to fail on the missing database\n{cluster.tail()}",
        )
        postgres.up()

        final = finished(cluster, run_id, timeout=90)
        assert final["state"] == "succeeded", final
        assert final["restarts"] >= 1 and final["attempt"] >= 2, final
        assert_no_finished_work_repeated(cluster)
        kinds = [e.kind for e in cluster.services.repository.events(run_id)]
        assert "resubmitted" in kinds and kinds.count("finished") == 1
    finally:
        cluster.stop()


# -- checkpoint storage --------------------------------------------------------------------------


class TinyStore:
    """A 1 MiB tmpfs mounted on the cluster's checkpoint root, which a test fills or makes read-only."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.filler = root / "filler"

    def mount(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", str(self.root)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise Unavailable(f"cannot mount a tmpfs (needs root): {done.stderr.strip()}")

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.root)], capture_output=True, check=False)

    def break_it(self, fault: str) -> None:
        if fault == "read_only":
            self._remount("ro")
            return
        with self.filler.open("wb") as handle:  # fill every page of the tmpfs
            try:
                while True:
                    handle.write(b"\0" * 65536)
                    handle.flush()
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc

    def repair(self, fault: str) -> None:
        if fault == "read_only":
            self._remount("rw")
        else:
            self.filler.unlink()

    def _remount(self, mode: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{mode}", str(self.root)], check=True, capture_output=True)


@pytest.fixture
def tiny_store(cluster: Cluster) -> Iterator[TinyStore]:
    store = TinyStore(cluster.checkpoint_root)
    try:
        store.mount()
    except Unavailable as exc:
        pytest.skip(str(exc))
    try:
        yield store
    finally:
        cluster.stop()  # nothing may hold the mount when it goes
        store.unmount()


FAULTS = {"full": "No space left on device", "read_only": "Read-only file system"}


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_checkpoint_storage_fault_mid_run_fails_clearly_and_resume_finishes(
    cluster: Cluster, tiny_store: TinyStore, fault: str
) -> None:
    cluster.overrides.update(FAST)
    start(cluster, nodes=1)
    hold = cluster.tmp / "release"
    # A save is an append to the run's journal: one that fits in the journal's last page needs no
    # room on the disk, so t6's saves carry 8 KiB each, more than a page.
    run_id = cluster.client.submit(ten_tasks(hold, pad=8192))
    wait_until(lambda: holding(cluster, 1), timeout=60, what=f"t6 to hold\n{cluster.tail()}")

    tiny_store.break_it(fault)
    hold.touch()  # the next progress save cannot be written
    final = finished(cluster, run_id)
    assert final["state"] == "failed", final
    assert "checkpoint write failed" in final["error"] and FAULTS[fault] in final["error"], final
    assert final["restarts"] == 0, "a storage fault is not a node loss"
    shown = run_cli("status", run_id, "--json", cwd=cluster.tmp, env=cluster.env())
    assert shown.returncode == 0 and FAULTS[fault] in json.loads(shown.stdout)["error"], shown
    events = run_cli("events", run_id, "--json", cwd=cluster.tmp, env=cluster.env())
    (ended,) = [e for e in json.loads(events.stdout) if e["kind"] == "finished"]
    assert FAULTS[fault] in json.dumps(ended), ended

    tiny_store.repair(fault)
    resumed = run_cli("resume", run_id, cwd=cluster.tmp, env=cluster.env())
    assert resumed.returncode == 0, resumed.stderr
    final = wait_until(
        lambda: (s := cluster.client.status(run_id))["state"] == "succeeded" and s,
        timeout=60,
        what=f"the resumed run to succeed\n{cluster.tail()}",
    )
    assert final["attempt"] == 2 and final["error"] is None
    assert_no_finished_work_repeated(cluster)
    units = [e for e in cluster.entries() if e["event"] == "unit"]
    assert [u["unit"] for u in units if u["epoch"] == 2] == list(range(HOLD_AT, 8)), (
        "resumed at its last save"
    )
    kinds = [e.kind for e in cluster.services.repository.events(run_id)]
    assert kinds.count("resumed") == 1 and kinds[-1] == "finished"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_read_only_checkpoint_storage_at_claim_fails_clearly_and_resume_finishes(
    cluster: Cluster, tiny_store: TinyStore
) -> None:
    cluster.overrides.update(FAST)
    start(cluster, nodes=1)
    hold = cluster.tmp / "release"
    hold.touch()
    tiny_store.break_it("read_only")
    run_id = cluster.client.submit(ten_tasks(hold, max_restarts=1))
    final = finished(cluster, run_id)
    assert final["state"] == "failed", final
    assert FAULTS["read_only"] in (final["error"] or ""), final
    assert final["restarts"] == 0, "a storage fault is not a node loss"
    assert T.read_log(cluster.log) == [], "nothing ran without a checkpoint"

    tiny_store.repair("read_only")
    assert run_cli("resume", run_id, cwd=cluster.tmp, env=cluster.env()).returncode == 0
    final = wait_until(
        lambda: RunState((s := cluster.client.status(run_id))["state"]).finished and s,
        timeout=60,
        what=f"the resumed run to end\n{cluster.tail()}",
    )
    assert final["state"] == "succeeded", final
    assert all(T.count(cluster.entries(), "end", f"t{n}") == 1 for n in range(1, 11))
