"""A worker node: a Celery worker on the recovery and run queues, the node's heartbeat over its own
named Redis connection (:mod:`orchestrator.control.connections`: its crash is seen when that
connection closes), and a watch on its pool processes (:mod:`workers.watch`)."""

from __future__ import annotations

import gc
import logging
import os
import socket

from celery.signals import worker_process_init, worker_ready

from orchestrator.observability.metrics import enable_multiprocess, metrics, serve
from orchestrator.packages import conditions
from orchestrator.runtime.broker import WORKER_QUEUES
from orchestrator.runtime.services import Services
from orchestrator.state.models import NodeState
from workers.lease import NodeHeartbeat
from workers.tasks import register_worker_tasks
from workers.watch import AttemptFiles, PoolWatch

log = logging.getLogger(__name__)


def default_node_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def prepare_pool_process(services: Services) -> None:
    """What a new pool process does before its first attempt (Celery's ``worker_process_init``).

    It builds its own per-process objects (the engine's pool after the fork, the Redis client,
    the liveness scripts, the event stream, the checkpoint store) and moves its metrics to files
    of its own, none of which opens a connection; then it leaves what it holds (Celery's worker,
    started after the node froze its own objects) out of garbage collection, whose full passes
    would otherwise walk those objects again and again while a long foreach allocates. All of
    it was paid by the process's first attempt, tens of milliseconds, all at once on 2 cores
    when a lost node's runs land on pool processes that have not run anything yet.
    """
    try:
        _ = services.liveness, services.events, services.repository, services.store
        metrics().checkpoint_writes.labels(result="ok").inc(0)  # the metrics' files of this process
    except Exception:
        # Not fatal: the first attempt builds whatever is missing (and reports what fails).
        log.exception("pool process %d could not prepare its services before its first attempt", os.getpid())
    gc.freeze()


def serve_worker(services: Services, node: str, concurrency: int, metrics_port: int | None) -> None:
    """Run the node until the Celery worker stops (SIGTERM: warm shutdown; SIGQUIT: cold)."""
    settings = services.settings
    if metrics_port is not None:
        # Before any metric exists: the pool's processes then write samples the node sums.
        enable_multiprocess(settings.state_dir / "metrics" / node)
        metrics_port = serve(metrics_port, multiprocess_mode=True)
    files = AttemptFiles.create(node)
    register_worker_tasks(services.app, services, node, files)
    services.repository.register_node(node, socket.gethostname(), os.getpid(), concurrency, metrics_port)
    services.before_fork()  # what every pool process inherits, prepared once here
    conditions.warm()
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "concurrency": concurrency,
        "metrics_port": metrics_port,
        "ready": False,  # alive, but its pool is not forked and nothing is read from the queues yet
    }
    own = services.node_redis(node)  # kept for the node's whole life: its closing is the crash signal
    heartbeat = NodeHeartbeat(services.liveness_on(own), node, info, settings.heartbeat_interval)
    heartbeat.beat()
    heartbeat.start()

    def announce_ready(**_: object) -> None:
        """Celery started the pool and consumes: say so at once, not with the next beat."""
        info["ready"] = True
        heartbeat.beat()
        log.info("worker node %s ready: %d pool process(es) reading the queues", node, concurrency)

    worker_ready.connect(announce_ready, weak=False)

    def prepare(**_: object) -> None:
        prepare_pool_process(services)

    worker_process_init.connect(prepare, weak=False)
    watch = PoolWatch(files, services.liveness, node)
    watch.start()
    log.info("worker node %s up (concurrency %d)", node, concurrency)
    # The pool's processes are forked from this one. Frozen objects are left out of garbage
    # collection, whose passes would otherwise write to every page the children share with
    # the parent and make each child a private copy (~30 MB per pool process measured).
    gc.collect()
    gc.freeze()
    try:
        services.app.worker_main(
            [
                "worker",
                f"--queues={','.join(WORKER_QUEUES)}",
                f"--concurrency={concurrency}",
                "--pool=prefork",
                f"--hostname={node}@%h",
                f"--loglevel={settings.log_level}",
                "--optimization=fair",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ]
        )
    finally:
        worker_ready.disconnect(announce_ready)
        worker_process_init.disconnect(prepare)
        watch.stop()
        heartbeat.stop()
        own.close()
        files.remove()
        services.repository.set_node_state(node, NodeState.STOPPED)
        log.info("worker node %s stopped", node)
