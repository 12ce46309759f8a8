"""The connections a process needs (Redis, SQL, Celery), made once per process.

Celery's prefork pool forks worker processes; a socket or a connection pool
inherited across a fork is shared by two processes and corrupts both. Every
accessor here therefore checks the process id and builds its own objects in
a new process; only a server database's engine is kept, with a new pool of its
own (:meth:`Services._inherited`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar, cast

import redis
from celery import Celery
from redis import Redis

from checkpoints import CheckpointStore, is_s3_url, open_store
from orchestrator.control.connections import NodeConnections
from orchestrator.control.liveness import Liveness
from orchestrator.control.stream import EventStream
from orchestrator.runtime.broker import RECOVERY_QUEUE, RUN_QUEUE, create_app, resolve_broker_url
from orchestrator.runtime.redisurl import connect
from orchestrator.runtime.settings import Settings
from orchestrator.state.engine import make_engine
from orchestrator.state.migrate import upgrade
from orchestrator.state.projection import Projections
from orchestrator.state.repository import Repository

T = TypeVar("T")


PREFIX = "orch"
"""The prefix of the liveness and event stream keys in Redis."""

_MIGRATED: set[str] = set()
"""Database URLs this process (or the process it was forked from) brought to the newest schema:
a worker node's pool processes do not check the migrations again before their first attempt."""


class Services:
    """Lazily built, per-process: ``redis``, ``liveness``, ``events``, ``connections``,
    ``repository``, ``projections``, ``app``, ``store``."""

    def __init__(self, settings: Settings, *, broker_url: str | None = None) -> None:
        self.settings = settings
        self._broker_url = broker_url
        self._pid = os.getpid()
        self._lock = threading.RLock()
        self._cache: dict[str, Any] = {}

    def _get(self, name: str, build: Callable[[], T]) -> T:
        with self._lock:
            if os.getpid() != self._pid:  # forked: nothing of the parent's may be used
                inherited = self._inherited()
                self._cache.clear()
                self._cache.update(inherited)
                self._pid = os.getpid()
            if name not in self._cache:
                self._cache[name] = build()
            return cast(T, self._cache[name])

    def _inherited(self) -> dict[str, Any]:
        """What a forked process keeps of its parent's: the PostgreSQL (or other server) engine,
        given a pool of its own without touching the parent's connections (SQLAlchemy's
        ``dispose(close=False)``). It keeps the engine's initialised dialect and compiled
        statements, which a new engine would build again on a pool process's first attempt.
        SQLite's engine is made anew: its connections must not cross a fork at all.
        """
        repository: Repository | None = self._cache.get("repository")
        if repository is None or not _forks_keep(repository):
            return {}
        repository.engine.dispose(close=False)
        kept: dict[str, Any] = {"repository": repository}
        if "projections" in self._cache:
            kept["projections"] = self._cache["projections"]
        return kept

    def before_fork(self) -> None:
        """Prepare what forked processes keep (:meth:`_inherited`): the claim's and the
        outcome's statements compiled once (:meth:`Repository.warm`). Nothing on SQLite,
        whose engine a forked process makes anew."""
        if _forks_keep(self.repository):
            self.repository.warm()

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
    def prefix(self) -> str:
        return PREFIX

    @property
    def redis(self) -> redis.Redis:
        return self._get(
            "redis", lambda: connect(self.broker_url, socket_timeout=5, socket_connect_timeout=5)
        )

    @property
    def liveness(self) -> Liveness:
        return self._get("liveness", lambda: self.liveness_on(self.redis))

    def liveness_on(self, client: Redis) -> Liveness:
        """The liveness scripts on another connection (a worker node's own)."""
        return Liveness(
            client,
            lease_ttl=self.settings.lease_ttl,
            claim_timeout=self.settings.claim_timeout,
            prefix=self.prefix,
            run_queue=RUN_QUEUE,
            recovery_queue=RECOVERY_QUEUE,
        )

    @property
    def events(self) -> EventStream:
        return self._get("events", lambda: EventStream(self.redis, prefix=self.prefix))

    @property
    def connections(self) -> NodeConnections:
        return self._get("connections", lambda: NodeConnections(self.redis, prefix=self.prefix))

    def node_redis(self, node: str) -> Redis:
        """The one connection a worker node keeps for its whole life, named and recorded
        (:mod:`orchestrator.control.connections`); not cached: the node owns it."""
        return connect(
            self.broker_url,
            socket_timeout=5,
            socket_connect_timeout=5,
            single_connection_client=True,
            redis_connect_func=self.connections.on_connect(node),
        )

    @property
    def repository(self) -> Repository:
        return self._get("repository", self._repository)

    @property
    def projections(self) -> Projections:
        return self._get("projections", lambda: Projections(self.repository.sessions))

    def _repository(self) -> Repository:
        url = self.settings.database_url.get_secret_value()
        engine = make_engine(url)
        if url not in _MIGRATED:
            upgrade(engine)
            _MIGRATED.add(url)
        return Repository(engine)

    @property
    def app(self) -> Celery:
        return self._get("app", lambda: create_app(self.broker_url))

    @property
    def store(self) -> CheckpointStore:
        return self._get("store", self._store)

    def _store(self) -> CheckpointStore:
        root = self.settings.checkpoint_root
        return open_store(root, s3=self.settings.s3_options() if is_s3_url(root) else None)

    def check_store(self) -> None:
        """Fail at start, clearly, when the checkpoint root cannot be used: an S3 bucket that
        cannot be reached and listed, or a directory this process cannot write
        (:class:`~checkpoints.CheckpointUnavailable`, naming it)."""
        self.store.check()


def _forks_keep(repository: Repository) -> bool:
    """Whether a forked process keeps this engine: a server database's, not SQLite's."""
    return repository.engine.dialect.name != "sqlite"
