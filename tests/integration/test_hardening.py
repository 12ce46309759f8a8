"""Hardening, end to end with real processes.

* A password-protected Redis works for the whole cluster, and a wrong password is refused
  with a clear message (no traceback, no password in any log).
* A TLS Redis (``rediss://``, verified against the test's CA) works for the whole cluster;
  a ``rediss://`` URL with no CA verifies the server all the same and is refused.
* A sensitive variable is encrypted at rest (checkpoint, SQL) and masked in every log line,
  event and status, while a careless task tries every way to print it; it survives a
  failover intact; no variable value reaches a metrics endpoint.
* A task module outside ``ORCHESTRATOR_TASK_MODULES`` is refused at submission by the
  scheduler, and by a worker node itself, before its module is imported.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from pathlib import Path
from typing import Any

import pytest
import redis

from checkpoints import FilesystemCheckpointStore, SecretBox
from tests.integration.test_failover import FAST, finished
from tests.integration.test_metrics import free_port, scrape
from tests.support import booby_trap
from tests.support.cli import run_cli, wait_until, write_package
from tests.support.cluster import Cluster
from tests.support.nodes import start_node
from tests.support.servers import PrivateRedis, Unavailable, make_certificates, tls_redis_binary

pytestmark = pytest.mark.timeout(150)

TWO_STEPS = {
    "name": "two",
    "tasks": [
        {"id": "a", "python": "tests.support.tasks:step"},
        {"id": "b", "python": "tests.support.tasks:step", "depends_on": ["a"]},
    ],
}


def logs(cluster: Cluster) -> str:
    return "\n".join((cluster.tmp / f"{name}.log").read_text(errors="replace") for name in cluster.processes)


def run_two_steps(cluster: Cluster) -> Path:
    """Start a scheduler and a node, and run the two-step package to success through them."""
    cluster.start_scheduler()
    cluster.start_node("node-1")
    cluster.wait_nodes("node-1")
    package = write_package(cluster.tmp / "two.yaml", TWO_STEPS)
    done = submit_and_wait(cluster, package)
    assert (done["returncode"], done["state"]) == (0, "succeeded"), done
    return package


def submit_and_wait(cluster: Cluster, package: Path, **env: str) -> dict[str, Any]:
    done = run_cli(
        "submit",
        str(package),
        "--wait",
        "--timeout",
        "60",
        "--json",
        cwd=cluster.tmp,
        env={**cluster.env(), **env},
    )
    assert done.stdout, f"{done.stderr}\n{cluster.tail()}"
    return {"returncode": done.returncode, **json.loads(done.stdout)}


# -- Redis password and TLS ----------------------------------------------------------------------


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_password_protected_redis(tmp_path: Path, database_url: str) -> None:
    with PrivateRedis(tmp_path / "redis") as server:
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=server.port).ping()  # the server does require the password
        cluster = Cluster(tmp_path, server.url(), database_url)
        try:
            package = run_two_steps(cluster)

            wrong = server.url().replace(server.password, "not-the-password")
            refused = run_cli(
                "submit", str(package), cwd=tmp_path, env={**cluster.env(), "ORCHESTRATOR_BROKER_URL": wrong}
            )
            assert refused.returncode == 1, refused
            assert "cannot use the broker" in refused.stderr and "password" in refused.stderr
            assert "Traceback" not in refused.stderr
            assert server.password not in logs(cluster) + refused.stderr + refused.stdout
        finally:
            cluster.stop()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_tls_redis(tmp_path: Path, database_url: str) -> None:
    try:
        binary = tls_redis_binary()
    except Unavailable as exc:
        pytest.skip(str(exc))
    certificates = make_certificates(tmp_path / "certs")
    with PrivateRedis(tmp_path / "redis", tls=certificates, binary=binary) as server:
        assert server.url().startswith("rediss://") and "ssl_ca_certs=" in server.url()
        with pytest.raises(redis.ConnectionError):
            redis.Redis(port=server.port, password=server.password, socket_timeout=5).ping()  # no TLS
        cluster = Cluster(tmp_path, server.url(), database_url)
        try:
            package = run_two_steps(cluster)

            # No CA given: the server's certificate is still verified (against the system's
            # CAs, which do not know the test CA), on the queue as on the liveness connection.
            unverified = server.url().partition("?")[0]
            refused = run_cli(
                "submit",
                str(package),
                cwd=tmp_path,
                env={**cluster.env(), "ORCHESTRATOR_BROKER_URL": unverified},
            )
            assert refused.returncode == 1, refused
            assert "CERTIFICATE_VERIFY_FAILED" in refused.stderr and "Traceback" not in refused.stderr
            assert server.client().llen("orchestrator.control") == 0, "nothing was sent unverified"
        finally:
            cluster.stop()


# -- sensitive variables -----------------------------------------------------------------------


def leaky_package(hold: Path, secret: str) -> dict[str, Any]:
    return {
        "name": "leaky",
        "variables": {
            "password": {"type": "str", "sensitive": True},
            "batch": {"type": "str", "default": "none"},
        },
        "tasks": [
            {
                "id": "leak",
                "python": "tests.support.leaky:leak",
                "retries": 1,
                "retry_delay": 0,
                "timeout": 60,
            },
            {
                "id": "load",
                "python": "tests.support.tasks:units",
                "params": {"units": 3, "hold_at": 1, "hold": str(hold)},
                "depends_on": ["leak"],
            },
            {
                "id": "echo",
                "shell": "echo shell sees {{ vars.password }}; echo and {{ vars.password }} >&2; exit 3",
                "fail_package_on_failure": False,
                "depends_on": ["load"],
            },
            {
                "id": "check",
                "python": "tests.support.leaky:check",
                "params": {"sha256": hashlib.sha256(secret.encode()).hexdigest()},
                "depends_on": ["load"],
            },
        ],
    }


def test_sensitive_variables_are_encrypted_at_rest_and_masked_everywhere(
    cluster: Cluster, database_url: str
) -> None:
    secret = f"S3cret-{secrets.token_hex(8)}"
    visible = f"batch-{secrets.token_hex(8)}"  # not sensitive, but still no metric label
    key = secrets.token_urlsafe(32)
    scheduler_port = free_port()
    ports = {"node-1": free_port(), "node-2": free_port()}
    cluster.overrides.update(FAST)
    cluster.overrides.update(ORCHESTRATOR_SECRET_KEY=key, ORCHESTRATOR_METRICS_PORT=str(scheduler_port))
    cluster.start_scheduler()
    cluster.start_node("node-1", metrics_port=ports["node-1"])
    cluster.wait_nodes("node-1")
    hold = cluster.tmp / "release"
    package = write_package(cluster.tmp / "leaky.yaml", leaky_package(hold, secret))
    submitted = run_cli(
        "submit",
        str(package),
        "--var",
        f"batch={visible}",
        "--json",
        cwd=cluster.tmp,
        env={**cluster.env(), "ORCHESTRATOR_VAR_password": secret},  # off the command line
    )
    assert submitted.returncode == 0, submitted.stderr
    run_id = json.loads(submitted.stdout)["run_id"]
    wait_until(
        lambda: any(e["event"] == "holding" and e["task"] == "load" for e in cluster.entries()),
        timeout=60,
        what=f"the load task to hold\n{cluster.tail()}",
    )

    # At rest in the checkpoint: encrypted with the key, never in clear.
    run_dir = FilesystemCheckpointStore(cluster.checkpoint_root).run_dir("leaky", run_id)
    files = [p for p in run_dir.iterdir() if p.is_file()]
    assert files and not [p for p in files if secret.encode() in p.read_bytes()]
    saved = FilesystemCheckpointStore(cluster.checkpoint_root).load("leaky", run_id)
    assert saved is not None and "password" not in saved.variables
    assert SecretBox(key).decrypt("password", saved.secrets["password"]) == secret
    assert saved.variables["batch"] == visible
    # No variable value on any metrics endpoint.
    cluster.start_node("node-2", metrics_port=ports["node-2"])
    cluster.wait_nodes("node-2")
    for port in (scheduler_port, *ports.values()):
        exposed = wait_until(lambda p=port: _scrape(p), timeout=30, what=f"/metrics on {port}")
        assert secret not in exposed and visible not in exposed

    # Fail over: the next node decrypts the secret from the run's encrypted state.
    cluster.kill("node-1")
    wait_until(lambda: holding_load(cluster, 2), timeout=60, what=f"the run to resume\n{cluster.tail()}")
    hold.touch()
    final = finished(cluster, run_id)
    assert final["state"] == "succeeded" and final["node"] == "node-2", final
    assert final["tasks"] == {
        "leak": "succeeded",
        "load": "succeeded",
        "echo": "failed",
        "check": "succeeded",
    }

    shown = {
        " ".join(args): run_cli(*args, cwd=cluster.tmp, env=cluster.env()).stdout
        for args in (
            ("status", run_id, "--json"),
            ("status", run_id),
            ("events", run_id, "--json"),
            ("events", run_id),
            ("runs", "--json"),
        )
    }
    events = json.loads(shown[f"events {run_id} --json"])
    failures = [e for e in events if e["kind"] == "task_failed"]
    assert {e["detail"]["task"] for e in failures} == {"leak", "echo"}
    assert all("***" in e["detail"]["error"] for e in failures), failures
    for place, text in {**shown, "logs": logs(cluster)}.items():
        assert secret not in text, f"the secret leaked into {place}"
    assert "connecting with password ***" in logs(cluster) and "stdout sees ***" in logs(cluster)
    assert "module logger sees ***" in logs(cluster) and "shell sees ***" in logs(cluster)

    repo = cluster.services.repository
    stored = json.dumps(repo.run_row(run_id).variables) + json.dumps([e.detail for e in repo.events(run_id)])
    stored += json.dumps([row.error for row in repo.task_states(run_id).values()])
    assert secret not in stored and visible in stored
    if database_url.startswith("sqlite"):
        for path in cluster.tmp.glob("state.db*"):
            assert secret.encode() not in path.read_bytes(), f"the secret is in clear in {path.name}"


def holding_load(cluster: Cluster, epoch: int) -> bool:
    return any(
        e["event"] == "holding" and e["task"] == "load" and e["epoch"] == epoch for e in cluster.entries()
    )


def _scrape(port: int) -> str | None:
    try:
        return scrape(port)
    except OSError:
        return None


# -- task modules ------------------------------------------------------------------------------


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_task_modules_outside_the_allowed_roots_are_refused(cluster: Cluster) -> None:
    marker = cluster.tmp / booby_trap.MARKER
    marker.unlink(missing_ok=True)  # importing it here (the test process) left one
    cluster.overrides.update(FAST)
    restricted = {"ORCHESTRATOR_TASK_MODULES": "tests.support.tasks"}
    cluster.overrides.update(restricted)
    cluster.start_scheduler("scheduler-strict")
    start_node(cluster, "node-1", env=restricted)
    cluster.wait_nodes("node-1")

    # The scheduler refuses the submission: a module outside the roots, or one that only
    # starts with a root's name.
    for target in ("tests.support.booby_trap:step", "tests.support.tasksx:step"):
        trap = write_package(
            cluster.tmp / "trap.yaml", {"name": "trap", "tasks": [{"id": "t1", "python": target}]}
        )
        done = submit_and_wait(cluster, trap)
        assert (done["returncode"], done["state"]) == (1, "failed"), done
        assert "outside ORCHESTRATOR_TASK_MODULES" in done["error"] and "refused" in done["error"]
        kinds = [e.kind for e in cluster.services.repository.events(done["run_id"])]
        assert kinds == ["refused"]

    # A scheduler without the setting lets it through; the node refuses it before importing it.
    cluster.kill("scheduler-strict")
    cluster.overrides["ORCHESTRATOR_TASK_MODULES"] = ""
    cluster.start_scheduler("scheduler-open")
    mixed = write_package(
        cluster.tmp / "mixed.yaml",
        {
            "name": "mixed",
            "tasks": [
                {"id": "t1", "python": "tests.support.tasks:step"},
                {"id": "t2", "python": "tests.support.booby_trap:step", "depends_on": ["t1"]},
            ],
        },
    )
    done = submit_and_wait(cluster, mixed)
    assert (done["returncode"], done["state"]) == (1, "failed"), done
    assert "refused: module is outside ORCHESTRATOR_TASK_MODULES" in done["error"], done
    assert done["tasks"] == {"t1": "succeeded", "t2": "failed"}
    assert not marker.exists(), "the refused module was imported on the worker"
