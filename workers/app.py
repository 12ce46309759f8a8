"""The Celery application: JSON only, queues and the acknowledgement policy.

Two queues: ``orchestrator.control`` carries submissions and resumes to the
schedulers; ``orchestrator.runs`` carries attempts to the worker nodes.

Acknowledgements: an attempt message is acknowledged when a worker process
takes it (``acks_late`` off). Losing a node after that is not the broker's
problem: the attempt's lease expires and the scheduler resubmits the run in
seconds, fenced by a new epoch. Control messages are acknowledged after they
are handled, so a scheduler killed mid-submission leaves its message to be
redelivered (after ``visibility_timeout``) to another scheduler, which handles
it idempotently.
"""

from __future__ import annotations

import ssl

from celery import Celery

CONTROL_QUEUE = "orchestrator.control"
RUN_QUEUE = "orchestrator.runs"

SUBMIT_TASK = "orchestrator.submit"
RESUME_TASK = "orchestrator.resume"
RUN_TASK = "orchestrator.run_attempt"

VISIBILITY_TIMEOUT = 60


def create_app(broker_url: str) -> Celery:
    """A Celery app on ``broker_url`` (Redis; password and ``rediss://`` TLS URLs work)."""
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
        broker_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT},
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
