"""Broker URLs: Sentinel URLs parsed for redis-py and for kombu; plain Redis URLs left alone."""

from __future__ import annotations

import re

import pytest
from redis.connection import AbstractConnection

from orchestrator.runtime.broker import create_app
from orchestrator.runtime.redisurl import connect, is_sentinel, parse_sentinel


def test_a_sentinel_url_names_its_sentinels_master_database_and_passwords() -> None:
    url = "sentinel://:s%40cret@10.0.0.1:26379,10.0.0.2:26380/3?master=mymaster&sentinel_password=sp"
    parsed = parse_sentinel(url)
    assert parsed.hosts == (("10.0.0.1", 26379), ("10.0.0.2", 26380))
    assert (parsed.master, parsed.db, parsed.password, parsed.sentinel_password) == (
        "mymaster",
        3,
        "s@cret",
        "sp",
    )
    assert parsed.kombu_url() == "sentinel://:s%40cret@10.0.0.1:26379/3;sentinel://:s%40cret@10.0.0.2:26380/3"
    assert parsed.transport_options() == {"master_name": "mymaster", "sentinel_kwargs": {"password": "sp"}}


def test_kombus_form_is_read_too() -> None:
    parsed = parse_sentinel("sentinel://h1:26379/0;sentinel://h2:26379/0?master=m")
    assert parsed.hosts == (("h1", 26379), ("h2", 26379))
    assert (parsed.master, parsed.db, parsed.password) == ("m", 0, None)
    assert parsed.kombu_url() == "sentinel://h1:26379/0;sentinel://h2:26379/0"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sentinel://h1:26379/0", "needs ?master=NAME"),
        ("sentinel://h1/0?master=m", "is not HOST:PORT"),
        ("sentinel://h1:26379/db?master=m", "is not a number"),
    ],
)
def test_a_bad_sentinel_url_says_what_is_wrong(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_sentinel(url)


def test_the_celery_app_uses_kombus_sentinel_transport() -> None:
    app = create_app("sentinel://:pw@h1:26379,h2:26379/1?master=mymaster")
    assert app.conf.broker_url == "sentinel://:pw@h1:26379/1;sentinel://:pw@h2:26379/1"
    options = app.conf.broker_transport_options
    assert options["master_name"] == "mymaster"
    assert options["queue_order_strategy"] == "priority", "the recovery queue is read first"
    assert not is_sentinel("redis://h1:6379/0")
    assert create_app("redis://h1:6379/0").conf.broker_url == "redis://h1:6379/0"


def test_a_new_connection_sends_only_what_it_needs(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """No ``CLIENT SETINFO`` (two round trips, refused before Redis 7.2, and a read of the
    package metadata each): every new pool process opens its connections on its first attempt."""
    sent: list[tuple[object, ...]] = []
    original = AbstractConnection.send_command

    def recording(self: AbstractConnection, *args: object, **kwargs: object) -> None:
        sent.append(args[:2])
        original(self, *args, **kwargs)

    monkeypatch.setattr(AbstractConnection, "send_command", recording)
    client = connect(redis_url)
    try:
        assert client.ping()
    finally:
        client.close()
    assert ("CLIENT", "SETINFO") not in sent
    assert sent[-1][:1] == ("PING",)
