"""A network namespace joined to this host by a veth pair: a second "host" whose link can be cut.

::

    with NetworkNamespace.create() as ns:     # Unavailable (with the reason) if it cannot be made
        subprocess.Popen([*ns.exec_prefix(), "python", ...])   # runs "on the other host"
        ns.cut()     # both ends of the link down: packets are dropped, connections hang
        ns.heal()    # the link is back; TCP connections that did not time out carry on

The namespace gets ``guest`` and the host end ``host`` (a private /30, picked so it clashes with
no address of this machine). Traffic only ever goes between the two ends, on this machine.
Everything is removed on exit, even when the test failed: deleting the namespace deletes the
veth pair with it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

from tests.support.servers import Unavailable

_POOL = ipaddress.ip_network("10.213.0.0/16")  # /30 blocks of it, one per namespace


def _ip(*args: str, namespace: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    prefix = ["ip", "netns", "exec", namespace] if namespace else []
    done = subprocess.run([*prefix, "ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if check and done.returncode != 0:
        raise Unavailable(f"`ip {' '.join(args)}` failed: {done.stderr.strip() or done.stdout.strip()}")
    return done


@dataclass
class NetworkNamespace:
    name: str
    host_if: str
    guest_if: str
    host: str
    guest: str

    @classmethod
    @contextlib.contextmanager
    def create(cls) -> Iterator[NetworkNamespace]:
        if shutil.which("ip") is None:
            raise Unavailable("iproute2's `ip` is not installed")
        if os.geteuid() != 0:
            raise Unavailable("network namespaces need root (or CAP_NET_ADMIN)")
        tag = secrets.token_hex(3)
        host, guest = _free_block()
        ns = cls(f"orch-{tag}", f"orh{tag}", f"org{tag}", host, guest)
        try:
            ns._build()
            yield ns
        finally:
            ns._remove()

    def _build(self) -> None:
        _ip("netns", "add", self.name)
        _ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.guest_if)
        _ip("link", "set", self.guest_if, "netns", self.name)
        _ip("addr", "add", f"{self.host}/30", "dev", self.host_if)
        _ip("link", "set", self.host_if, "up")
        _ip("addr", "add", f"{self.guest}/30", "dev", self.guest_if, namespace=self.name)
        _ip("link", "set", self.guest_if, "up", namespace=self.name)
        _ip("link", "set", "lo", "up", namespace=self.name)

    def _remove(self) -> None:
        _ip("link", "del", self.host_if, check=False)
        _ip("netns", "del", self.name, check=False)

    def exec_prefix(self) -> list[str]:
        """Prefix a command with this to run it inside the namespace (same pid: it execs)."""
        return ["ip", "netns", "exec", self.name]

    def cut(self) -> None:
        """Take both ends of the link down: every packet between the hosts is dropped."""
        _ip("link", "set", self.guest_if, "down", namespace=self.name)
        _ip("link", "set", self.host_if, "down")

    def heal(self) -> None:
        """Bring the link back up (addresses and routes come back with it)."""
        _ip("link", "set", self.host_if, "up")
        _ip("link", "set", self.guest_if, "up", namespace=self.name)


def _free_block() -> tuple[str, str]:
    """Two addresses of a /30 of the pool that no interface of this machine uses."""
    used = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True, check=False).stdout
    blocks = list(_POOL.subnets(new_prefix=30))
    for block in random.sample(blocks, 64):
        host, guest = (str(a) for a in block.hosts())
        if f" {host}/" not in used and f" {guest}/" not in used:
            return host, guest
    raise Unavailable(f"no free /30 in {_POOL} for the namespace's link")
