# syntax=docker/dockerfile:1
#
# One image for every orchestrator process: `orchestrator scheduler`,
# `orchestrator worker --node NAME --metrics-port 9809`, and the client commands
# (`submit`, `status`, `runs`, `events`, `nodes`, ...). See docs/deployment.md.
#
#   docker build -t checkpoint-orchestrator .
#   docker run --rm checkpoint-orchestrator run examples/orders_nightly.yaml
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A fixed uid/gid: Kubernetes' runAsUser/fsGroup and the owner of the shared
# checkpoint export (NFS) refer to these numbers.
ARG APP_UID=10001
ARG APP_GID=10001
RUN groupadd --system --gid "${APP_GID}" orchestrator \
 && useradd --system --uid "${APP_UID}" --gid orchestrator --no-create-home \
        --home-dir /var/lib/orchestrator --shell /usr/sbin/nologin orchestrator

# The project, with the PostgreSQL driver. The sources are removed once installed,
# so that nothing on the working directory's sys.path shadows the installed package.
# kombu[redis]: kombu's Redis transport imports `packaging`, which only that extra
# installs and pyproject.toml does not ask for yet (celery>=5.4, not celery[redis]);
# without it every process fails on its first connection to the broker.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY checkpoints/ checkpoints/
COPY orchestrator/ orchestrator/
COPY workers/ workers/
COPY examples/ examples/
RUN pip install ".[postgres]" "kombu[redis]" \
 && cd / && rm -rf /src

# The sample packages (`orchestrator submit examples/orders_nightly.yaml`); their
# task functions are installed with the project (`examples.orders`).
WORKDIR /app
COPY examples/ examples/
COPY deploy/docker/healthcheck.py /usr/local/bin/orchestrator-healthcheck

# Writable places, owned by the runtime user (a named volume mounted on an empty
# directory takes its owner from the image):
#   /app/.orchestrator                  local state: worker metrics files, the example's
#                                       default work directory (.orchestrator/example)
#   /var/lib/orchestrator/checkpoints   ORCHESTRATOR_CHECKPOINT_ROOT: shared by every worker
RUN chmod 0755 /usr/local/bin/orchestrator-healthcheck \
 && mkdir -p /app/.orchestrator/example /var/lib/orchestrator/checkpoints \
 && chown -R "${APP_UID}:${APP_GID}" /app/.orchestrator /var/lib/orchestrator

ENV ORCHESTRATOR_STATE_DIR=/app/.orchestrator \
    ORCHESTRATOR_CHECKPOINT_ROOT=/var/lib/orchestrator/checkpoints

# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER 10001:10001

# 9808: a scheduler's /metrics (ORCHESTRATOR_METRICS_PORT); 9809: a worker node's (--metrics-port 9809).
EXPOSE 9808 9809

# Healthy while this container's /metrics answers: the scheduler serves it once its
# database is migrated, a worker node before it starts consuming. Worker nodes
# pass their port: `orchestrator-healthcheck 9809`.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["orchestrator-healthcheck"]

ENTRYPOINT ["orchestrator"]
CMD ["--help"]
