#!/usr/bin/env python3
"""Container health check: exit 0 when this container's ``/metrics`` endpoint answers.

Usage: ``orchestrator-healthcheck [PORT]``. PORT defaults to
``ORCHESTRATOR_METRICS_PORT`` (a scheduler's port), else 9808; a worker node
passes its ``--metrics-port``.
"""

from __future__ import annotations

import os
import sys
import urllib.request

DEFAULT_PORT = 9808


def main(argv: list[str]) -> int:
    raw = argv[1] if len(argv) > 1 else os.environ.get("ORCHESTRATOR_METRICS_PORT", str(DEFAULT_PORT))
    try:
        url = f"http://127.0.0.1:{int(raw)}/metrics"
        with urllib.request.urlopen(url, timeout=4) as response:
            response.read(1)
            return 0 if response.status == 200 else 1
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"unhealthy: /metrics on port {raw!r}: {exc}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
