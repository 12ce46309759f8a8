"""Redis fixtures: a real server for the whole session, external or embedded.

``ORCHESTRATOR_TEST_REDIS_URL`` (CI: ``redis://127.0.0.1:6379/0``) selects an
existing server for ``redis_server`` and ``redis_url``; without it an
:class:`~orchestrator.cli.embedded.EmbeddedRedis` is started in a temporary
directory. Tests that restart the server take ``restartable_redis``, which is
always embedded (an external server is not ours to restart).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlsplit

import pytest
import redis

from orchestrator.cli.embedded import EmbeddedRedis

REDIS_URL_VARIABLE = "ORCHESTRATOR_TEST_REDIS_URL"


class RedisServer(Protocol):
    """A Redis server a test can talk to."""

    @property
    def url(self) -> str: ...

    @property
    def port(self) -> int: ...

    def restart(self) -> str:
        """Stop and start the server on the same port, keeping its data; return its URL."""
        ...


@dataclass
class ExternalRedis:
    """A server this test session did not start: it cannot be restarted."""

    url: str
    port: int = field(init=False)

    def __post_init__(self) -> None:
        self.port = urlsplit(self.url).port or 6379

    def restart(self) -> str:
        raise RuntimeError(
            f"{REDIS_URL_VARIABLE} names an external Redis, which tests must not restart; "
            "take the restartable_redis fixture instead"
        )


@pytest.fixture(scope="session")
def restartable_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """An embedded Redis of this session, whatever the environment; ``.restart()`` works."""
    with EmbeddedRedis() as server:
        server.start(tmp_path_factory.mktemp("restartable-redis"))
        yield server


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """The session's Redis: ``ORCHESTRATOR_TEST_REDIS_URL`` if set, else an embedded one."""
    external = os.environ.get(REDIS_URL_VARIABLE, "").strip()
    if external:
        yield ExternalRedis(_worker_database(external))
        return
    with EmbeddedRedis() as server:
        server.start(tmp_path_factory.mktemp("redis"))
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session Redis's URL, its database flushed before the test."""
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushdb()
    return redis_server.url


def _worker_database(url: str) -> str:
    """``url`` with its database moved up by the pytest-xdist worker's number (``gw1``: one up).

    Each worker flushes its database before every test: two workers on one database would
    flush each other's keys.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker.startswith("gw"):
        return url
    base, _, database = url.rpartition("/")
    if not database.isdigit() or not base.startswith(("redis://", "rediss://", "unix://")):
        base, database = url.rstrip("/"), "0"
    return f"{base}/{int(database) + int(worker.removeprefix('gw'))}"
