"""The broker: queue and task names, the Celery application, and finding the broker's URL.

The Celery application is JSON only, with the acknowledgement policy below.

Three queues: ``orchestrator.control`` carries submissions and resumes to
the schedulers; ``orchestrator.runs`` carries first attempts to the worker
nodes, and ``orchestrator.recovery`` the attempts that continue a run
(resubmitted after a node loss or a lost dispatch, or resumed by hand).
Worker nodes read the recovery queue first (kombu's ``priority`` queue
order: every poll asks for the recovery queue before the run queue), so a
run that a node loss interrupted, which has already spent its time and is
the one someone is waiting for, does not wait behind runs that have not
started. New runs are not starved for long: the recovery queue only ever
holds runs that were already running (at most the runs in flight when
nodes were lost, each at most ``max_restarts`` times), and it empties as
soon as that many pool processes come free.

Acknowledgements: an attempt message is acknowledged when a worker process
takes it (``acks_late`` off). Losing a node after that is not the broker's
problem: the attempt's lease expires and the scheduler resubmits the run in
seconds, fenced by a new epoch. Control messages are acknowledged after they
are handled, so a scheduler killed mid-submission leaves its message to be
redelivered (after ``visibility_timeout``) to another scheduler, which handles
it idempotently.
"""

from __future__ import annotations

import json
import ssl
from pathlib import Path

import redis
from celery import Celery
from redis.backoff import NoBackoff
from redis.retry import Retry

from orchestrator.errors import ClusterUnavailable
from orchestrator.runtime.redisurl import connect, is_sentinel, parse_sentinel
from orchestrator.runtime.settings import Settings

CONTROL_QUEUE = "orchestrator.control"
RUN_QUEUE = "orchestrator.runs"
RECOVERY_QUEUE = "orchestrator.recovery"
WORKER_QUEUES = (RECOVERY_QUEUE, RUN_QUEUE)
"""What a worker node reads, in priority order."""

SUBMIT_TASK = "orchestrator.submit"
RESUME_TASK = "orchestrator.resume"
RUN_TASK = "orchestrator.run_attempt"

VISIBILITY_TIMEOUT = 60

DISCOVERY_FILE = "cluster.json"
"""Where ``orchestrator up`` advertises its embedded broker, in the state directory."""


def create_app(broker_url: str) -> Celery:
    """A Celery app on ``broker_url`` (Redis; password, ``rediss://`` TLS and ``sentinel://`` URLs work)."""
    transport: dict[str, object] = {
        "visibility_timeout": VISIBILITY_TIMEOUT,
        # Poll the queues in the order a worker lists them (recovery first), every time.
        "queue_order_strategy": "priority",
    }
    if is_sentinel(broker_url):
        sentinel = parse_sentinel(broker_url)
        broker_url = sentinel.kombu_url()
        transport.update(sentinel.transport_options())
    app = Celery("orchestrator", broker=broker_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        event_serializer="json",
        result_serializer="json",
        result_backend=None,
        task_ignore_result=True,
        task_acks_late=False,
        task_reject_on_worker_lost=False,
        worker_prefetch_multiplier=1,
        # Take a message only when a pool process is free: a message reserved ahead would die
        # with its node and wait for the visibility timeout, since its run's claim deadline is
        # pushed back while the queue is busy (Celery >= 5.6, Redis; ignored before).
        worker_disable_prefetch=True,
        task_default_queue=RUN_QUEUE,
        task_routes={
            SUBMIT_TASK: {"queue": CONTROL_QUEUE},
            RESUME_TASK: {"queue": CONTROL_QUEUE},
            RUN_TASK: {"queue": RUN_QUEUE},
        },
        broker_transport_options=transport,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        worker_enable_remote_control=False,
        task_send_sent_event=False,
    )
    if broker_url.startswith("rediss://"):
        # kombu connects to a rediss:// URL without ssl_* options unverified (with a warning);
        # verify the server like redis-py does. The URL's ssl_cert_reqs/ssl_ca_certs still win.
        app.conf.broker_use_ssl = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    return app


def ping(url: str, timeout: float = 0.5) -> bool:
    """True when the Redis at ``url`` answers PING within ``timeout`` seconds."""
    try:
        client = connect(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), retries=0),
        )
        with client:
            return bool(client.ping())
    except (redis.RedisError, ValueError, OSError):
        return False


def discover(state_dir: Path) -> str | None:
    """The URL advertised in ``<state_dir>/cluster.json`` if that Redis answers, else ``None``.

    A missing, unreadable or stale discovery file (its server is gone) gives ``None``.
    """
    try:
        data = json.loads((Path(state_dir) / DISCOVERY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    url = data.get("url") if isinstance(data, dict) else None
    if isinstance(url, str) and ping(url):
        return url
    return None


def resolve_broker_url(settings: Settings) -> str:
    """The broker to use: ``ORCHESTRATOR_BROKER_URL`` if set, else the running embedded one.

    Raise :class:`~orchestrator.errors.ClusterUnavailable` when there is neither.
    """
    if settings.broker_url is not None:
        return settings.broker_url.get_secret_value()
    url = discover(settings.state_dir)
    if url is None:
        raise ClusterUnavailable(
            f"no broker: no local cluster is running for {settings.state_dir}; "
            "run `orchestrator up`, or set ORCHESTRATOR_BROKER_URL"
        )
    return url
