"""Worker nodes of a :class:`~tests.support.cluster.Cluster` started with something different:
a command prefix (``ip netns exec NS``: another "host") or extra environment (a skewed clock).

The process is registered in ``cluster.processes`` like any node, so ``kill``, ``signal``,
``tail`` and ``stop`` treat it the same way.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping, Sequence

from tests.support.cluster import Cluster


def start_node(
    cluster: Cluster,
    name: str,
    *,
    prefix: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    concurrency: int = 2,
) -> None:
    environment = {**cluster.env(), **(env or {})}
    command = [
        sys.executable,
        "-m",
        "orchestrator",
        "worker",
        "--node",
        name,
        "--concurrency",
        str(concurrency),
    ]
    output = (cluster.tmp / f"{name}.log").open("ab")
    cluster.processes[name] = subprocess.Popen(
        [*prefix, *command],
        cwd=cluster.tmp,
        env=environment,
        stdout=output,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    output.close()
