"""The connections a process needs (Redis, SQL, Celery), made once per process.

Celery's prefork pool forks worker processes; a socket or a connection pool
inherited across a fork is shared by two processes and corrupts both. Every
accessor here therefore checks the process id and builds its own objects in
a new process.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar, cast

import redis
from celery import Celery

from checkpoints import FilesystemCheckpointStore
from orchestrator.control.liveness import Liveness
from orchestrator.runtime.broker import RUN_QUEUE, create_app, resolve_broker_url
from orchestrator.runtime.settings import Settings
from orchestrator.state.engine import make_engine
from orchestrator.state.migrate import upgrade
from orchestrator.state.repository import Repository

T = TypeVar("T")


class Services:
    """Lazily built, per-process: ``redis``, ``liveness``, ``repository``, ``app``, ``store``."""

    def __init__(self, settings: Settings, *, broker_url: str | None = None) -> None:
        self.settings = settings
        self._broker_url = broker_url
        self._pid = os.getpid()
        self._lock = threading.RLock()
        self._cache: dict[str, Any] = {}

    def _get(self, name: str, build: Callable[[], T]) -> T:
        with self._lock:
            if os.getpid() != self._pid:  # forked: nothing of the parent's may be used
                self._cache.clear()
                self._pid = os.getpid()
            if name not in self._cache:
                self._cache[name] = build()
            return cast(T, self._cache[name])

    def close(self) -> None:
        """Release the connections this process made (engine pool, Redis pool)."""
        with self._lock:
            cache, self._cache = self._cache, {}
        if "repository" in cache:
            cache["repository"].engine.dispose()
        if "redis" in cache:
            cache["redis"].close()

    @property
    def broker_url(self) -> str:
        if self._broker_url is None:
            self._broker_url = resolve_broker_url(self.settings)
        return self._broker_url

    @property
    def redis(self) -> redis.Redis:
        return self._get(
            "redis",
            lambda: redis.Redis.from_url(self.broker_url, socket_timeout=5, socket_connect_timeout=5),
        )

    @property
    def liveness(self) -> Liveness:
        return self._get(
            "liveness",
            lambda: Liveness(
                self.redis,
                lease_ttl=self.settings.lease_ttl,
                claim_timeout=self.settings.claim_timeout,
                run_queue=RUN_QUEUE,
            ),
        )

    @property
    def repository(self) -> Repository:
        return self._get("repository", self._repository)

    def _repository(self) -> Repository:
        engine = make_engine(self.settings.database_url.get_secret_value())
        upgrade(engine)
        return Repository(engine)

    @property
    def app(self) -> Celery:
        return self._get("app", lambda: create_app(self.broker_url))

    @property
    def store(self) -> FilesystemCheckpointStore:
        return self._get("store", lambda: FilesystemCheckpointStore(self.settings.checkpoint_root))
