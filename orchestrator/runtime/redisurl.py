"""Broker URLs: a Redis server (``redis://``, ``rediss://``) or a master found through Sentinel.

A Sentinel URL names the sentinels, the master's name and the database::

    sentinel://[:PASSWORD@]HOST:PORT[,HOST:PORT...]/DB?master=NAME[&sentinel_password=P]

``PASSWORD`` is the Redis master's; ``sentinel_password`` the sentinels' own
(if they have one). Kombu's form, ``sentinel://H1:P1/0;sentinel://H2:P2/0``
with the master's name in ``?master=``, is read too. Everything that takes a
broker URL takes either: the queues (kombu's Sentinel transport), the liveness
scripts and the event stream (redis-py's Sentinel client, always on the
current master: after a failover, the next command reconnects to the new one).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import redis
from redis.sentinel import Sentinel, SentinelConnectionPool

SCHEME = "sentinel"


def _without_client_info() -> dict[str, Any]:
    """Connection options that skip redis-py's ``CLIENT SETINFO`` on every new connection.

    redis-py sends two of them after connecting, each with its version read from the package
    metadata again; a server before 7.2 refuses both. A new pool process pays that on each of
    its first connections, on the first attempt it runs: after a node loss, on every one of the
    runs it takes over at once. (``driver_info`` since redis-py 7; ``lib_name``/``lib_version``
    before, deprecated since.)
    """
    accepted = inspect.signature(redis.connection.AbstractConnection.__init__).parameters
    return {"driver_info": None} if "driver_info" in accepted else {"lib_name": None, "lib_version": None}


NO_CLIENT_INFO = _without_client_info()


@dataclass(frozen=True)
class SentinelUrl:
    """A parsed Sentinel URL (see the module docstring)."""

    hosts: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    password: str | None = None
    username: str | None = None
    sentinel_password: str | None = None

    def kombu_url(self) -> str:
        """The same for kombu's Sentinel transport (the master's name goes in its options)."""
        auth = ""
        if self.password is not None:
            auth = f"{quote(self.username or '', safe='')}:{quote(self.password, safe='')}@"
        return ";".join(f"{SCHEME}://{auth}{host}:{port}/{self.db}" for host, port in self.hosts)

    def transport_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"master_name": self.master}
        if self.sentinel_password is not None:
            options["sentinel_kwargs"] = {"password": self.sentinel_password}
        return options

    def client(self, *, single_connection_client: bool = False, **kwargs: Any) -> redis.Redis:
        """A client of the current master."""
        sentinel_kwargs: dict[str, Any] = {
            **NO_CLIENT_INFO,
            **{key: kwargs[key] for key in ("socket_timeout", "socket_connect_timeout") if key in kwargs},
        }
        if self.sentinel_password is not None:
            sentinel_kwargs["password"] = self.sentinel_password
        sentinel = Sentinel(list(self.hosts), sentinel_kwargs=sentinel_kwargs)  # type: ignore[no-untyped-call]
        pool = SentinelConnectionPool(  # type: ignore[no-untyped-call]
            self.master, sentinel, db=self.db, password=self.password, username=self.username, **kwargs
        )
        client = _MasterClient(connection_pool=pool, single_connection_client=single_connection_client)
        client.sentinels = sentinel
        return client


class _MasterClient(redis.Redis):
    """A client of the master that also closes its connections to the sentinels."""

    sentinels: Sentinel

    def close(self) -> None:
        super().close()
        for client in self.sentinels.sentinels:
            client.close()


def is_sentinel(url: str) -> bool:
    return url.startswith(f"{SCHEME}://")


def parse_sentinel(url: str) -> SentinelUrl:
    """Parse a Sentinel URL; raise ``ValueError`` naming what is wrong."""
    parts = [part for part in url.split(";") if part.strip()]
    hosts: list[tuple[str, int]] = []
    first = urlsplit(parts[0])
    query = parse_qs(first.query)
    for part in parts:
        split = urlsplit(part.strip())
        if split.scheme != SCHEME:
            raise ValueError(f"not a {SCHEME}:// URL")
        for address in split.netloc.rpartition("@")[2].split(","):
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"sentinel address {address!r} is not HOST:PORT")
            hosts.append((host.strip("[]"), int(port)))
        query = {**parse_qs(split.query), **query}
    master = (query.get("master") or query.get("master_name") or [""])[0]
    if not master:
        raise ValueError("a sentinel:// URL needs ?master=NAME")
    path = first.path.strip("/") or "0"
    if not path.isdigit():
        raise ValueError(f"database {path!r} is not a number")
    sentinel_password = query["sentinel_password"][0] if query.get("sentinel_password") else None
    return SentinelUrl(
        hosts=tuple(hosts),
        master=master,
        db=int(path),
        password=unquote(first.password) if first.password is not None else None,
        username=unquote(first.username) if first.username else None,
        sentinel_password=sentinel_password,
    )


def connect(url: str, **kwargs: Any) -> redis.Redis:
    """A redis-py client for any broker URL (``single_connection_client`` and connection options
    such as ``redis_connect_func`` are honoured for both kinds)."""
    kwargs = {**NO_CLIENT_INFO, **kwargs}
    if is_sentinel(url):
        return parse_sentinel(url).client(**kwargs)
    return redis.Redis.from_url(url, **kwargs)
