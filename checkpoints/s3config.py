"""How to reach an S3 checkpoint store: the root URL and the client options (no boto3 import here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from checkpoints.errors import CheckpointError


def parse_url(url: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` as ``(bucket, prefix)``, the prefix empty or ending in ``/``."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise CheckpointError(f"not an S3 checkpoint root: {url!r} (expected s3://bucket/prefix)")
    if parts.query or parts.fragment or "@" in parts.netloc:
        raise CheckpointError("an S3 checkpoint root is s3://bucket/prefix, without credentials or options")
    prefix = parts.path.strip("/")
    return parts.netloc, f"{prefix}/" if prefix else ""


def shown_endpoint(endpoint_url: str | None) -> str:
    """The endpoint for messages: without any user:password it might carry."""
    if not endpoint_url:
        return "the default AWS endpoint"
    parts = urlsplit(endpoint_url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


@dataclass(frozen=True)
class S3Options:
    """How to reach the bucket; every ``None`` falls back to boto3's own chain (``AWS_*``, profiles)."""

    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    profile: str | None = None
    connect_timeout: float = 5.0
    read_timeout: float = 20.0
    max_attempts: int | None = None
    """botocore's attempts of one request (its standard backoff); None: ``AWS_MAX_ATTEMPTS``, else 3."""
    retry_timeout: float = 20.0
    """Seconds the store keeps trying an unreachable or 5xx-answering server before it gives up
    (:class:`~checkpoints.errors.CheckpointUnavailable`); below ``ORCHESTRATOR_CHECKPOINT_TIMEOUT``."""
