"""Task functions that try every way a careless task leaks a secret variable.

``leak`` writes the ``password`` variable to its task logger, to a module logger, to stdout
and to stderr, and fails its first try with the secret in the exception message (then a
traceback is logged). ``check`` proves the secret reached it intact without showing it.
The hardening tests assert that none of this leaves the worker in clear text.
"""

from __future__ import annotations

import hashlib
import logging
import sys
from typing import Any

from tests.support.tasks import count, log_path, read_log, record
from workers.context import TaskContext

log = logging.getLogger("tests.leaky")


def leak(ctx: TaskContext) -> dict[str, Any]:
    secret = ctx.vars["password"]
    earlier = count(read_log(log_path(ctx)), "start", ctx.task_id)
    record(ctx, "start")
    ctx.log.warning("connecting with password %s", secret)
    log.error("module logger sees %s", secret)
    print(f"stdout sees {secret}")
    print(f"stderr sees {secret}", file=sys.stderr)
    if earlier == 0:
        raise ConnectionError(f"login refused for password {secret!r}")
    record(ctx, "end")
    return {"connected": True}


def check(ctx: TaskContext) -> dict[str, Any]:
    """Fail unless ``password`` hashes to ``params.sha256``: the secret survived intact."""
    record(ctx, "start")
    digest = hashlib.sha256(str(ctx.vars["password"]).encode()).hexdigest()
    if digest != ctx.params["sha256"]:
        raise ValueError("the password this attempt was given is not the one submitted")
    record(ctx, "end")
    return {"checked": True}
