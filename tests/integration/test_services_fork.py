"""A worker node's pool processes are forked from the node: what they keep of its services.

A server database's engine is kept with a pool of its own (the parent's connections are never
used nor closed by the child), so the statements the node compiled before forking
(``Services.before_fork``) are not compiled again by each pool
process on its first attempt. SQLite's engine is made anew in the child.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from sqlalchemy import text

from orchestrator.packages.validation import parse_package
from orchestrator.runtime.services import Services
from orchestrator.state.repository import Repository
from orchestrator.state.states import RunState
from tests.integration.test_ui_api import settings_for

PACKAGE = {"name": "forked", "tasks": [{"id": "only", "python": "bench.tasks:noop"}]}


def backend_pid(repo: Repository) -> Any:
    """The server's id of the pooled connection (SQLite: none)."""
    if repo.engine.dialect.name == "sqlite":
        return None
    with repo.engine.connect() as connection:
        return connection.execute(text("SELECT pg_backend_pid()")).scalar()


def claim_compiled(repo: Repository) -> bool:
    """Whether the engine holds the claim's compiled UPDATE ... RETURNING."""
    return any(
        str(compiled).startswith("UPDATE runs") and "RETURNING" in str(compiled)
        for compiled in list(repo.engine._compiled_cache.values())  # type: ignore[attr-defined]
    )


def in_child(services: Services, repo: Repository) -> dict[str, Any]:
    """Fork; in the child, claim a run through ``services``; return what it saw."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child reports through the pipe and exits without any cleanup of the parent's
        code = 1
        try:
            child = services.repository
            seen = {"same_engine": child.engine is repo.engine, "warm": claim_compiled(child)}
            seen["claimed"] = child.mark_claimed("fork-1", 1, 1, "n1").state.value
            seen["backend"] = backend_pid(child)
            os.write(write, json.dumps(seen).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    with os.fdopen(read) as pipe:
        body = pipe.read()
    assert os.waitstatus_to_exitcode(status) == 0, body
    result: dict[str, Any] = json.loads(body)
    return result


def test_a_forked_process_keeps_a_server_engine_with_a_pool_of_its_own(
    redis_url: str, database_url: str, tmp_path: Path
) -> None:
    services = Services(settings_for(redis_url, database_url, tmp_path), broker_url=redis_url)
    repo = services.repository
    try:
        package = parse_package(PACKAGE)
        repo.register_package(package)
        repo.create_run("fork-1", package, {}, max_restarts=1, epoch=1)
        server = repo.engine.dialect.name != "sqlite"
        services.before_fork()  # warms what the child keeps (nothing on SQLite); changes nothing
        assert repo.run_row("fork-1").state is RunState.QUEUED
        assert claim_compiled(repo) == server
        parent_backend = backend_pid(repo)  # a connection pooled in the parent

        seen = in_child(services, repo)

        assert seen["claimed"] == "running"
        assert (seen["same_engine"], seen["warm"]) == (server, server)
        if server:
            # The child had its own connection, and the parent's pooled one is still the same
            # (the child neither used nor closed it).
            assert seen["backend"] != parent_backend
            assert backend_pid(repo) == parent_backend
        assert repo.run_row("fork-1").state is RunState.RUNNING
    finally:
        services.close()
