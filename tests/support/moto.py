"""moto's S3 server, started by the tests on a free port: the second S3 the store's tests run on.

SeaweedFS is a real object server; moto answers as AWS documents (404 for ``If-Match`` on a missing
key, for one). Its conditional writes check the condition and then store the object without a lock
(moto/s3/responses.py), so two racing writers can both win there: the race tests skip on it and
say so. Same interface as :class:`tests.support.seaweed.SeaweedServer` where the tests use it.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator

import pytest
from botocore.exceptions import ClientError

from orchestrator.cli.seaweed import LocalS3
from tests.support.servers import free_port

__all__ = ["MotoS3", "moto_s3"]

NOT_ATOMIC = (
    "moto's PutObject checks If-Match / If-None-Match and then stores the object without a lock "
    "(moto/s3/responses.py): racing conditional writes can both succeed there, unlike on S3"
)


class MotoS3(LocalS3):
    """moto's ``ThreadedMotoServer`` on 127.0.0.1 with one bucket."""

    kind = "moto"

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer  # the dev extra; imported only where used

        self.port = free_port()
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.access_key = "AKIA" + secrets.token_hex(6).upper()
        self.secret_key = secrets.token_hex(20)
        self.bucket = "checkpoints-" + secrets.token_hex(4)
        self.unsupported: str | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.server.start()
        self.store(f"s3://{self.bucket}").client.create_bucket(Bucket=self.bucket)
        self.unsupported = self._probe_conditions()

    def _probe_conditions(self) -> str | None:
        """Why this moto cannot fence (it ignores a condition on PutObject), or None."""
        client, key = self.store(f"s3://{self.bucket}").client, "probe-" + secrets.token_hex(4)
        client.put_object(Bucket=self.bucket, Key=key, Body=b"1")
        ignored = []
        for condition in ({"IfNoneMatch": "*"}, {"IfMatch": '"0"'}):
            try:
                client.put_object(Bucket=self.bucket, Key=key, Body=b"2", **condition)  # type: ignore[arg-type]
                ignored.append(next(iter(condition)))
            except ClientError:
                pass  # refused, as it must be
        client.delete_object(Bucket=self.bucket, Key=key)
        if not ignored:
            return None
        return f"this moto ignores {' and '.join(ignored)} on PutObject: the store cannot fence on it"

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoS3]:
    """The session's moto S3 server (skipped, with the reason, where moto is not installed)."""
    try:
        server = MotoS3()
    except ImportError as exc:
        pytest.skip(f"moto's server is not installed (the dev extra has moto[server]): {exc}")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one access log line per request
    server.start()
    try:
        if server.unsupported:
            pytest.skip(server.unsupported)
        yield server
    finally:
        server.stop()
