"""Every setting of the orchestrator, read once from the environment (prefix ``ORCHESTRATOR_``).

This class is the one place where defaults are documented; the README's
settings table is generated from the same names.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from checkpoints import S3Options


class Settings(BaseSettings):
    """Configuration of schedulers, workers and the CLI."""

    # An empty variable means "unset": ORCHESTRATOR_BROKER_URL= selects the embedded broker.
    model_config = SettingsConfigDict(env_prefix="ORCHESTRATOR_", extra="ignore", env_ignore_empty=True)

    broker_url: SecretStr | None = Field(
        default=None,
        description="Redis URL of the queue and of leases; unset: an embedded Redis is used",
    )
    database_url: SecretStr = Field(
        default=SecretStr("sqlite:///.orchestrator/state.db"),
        description="SQLAlchemy URL of the run state",
    )
    checkpoint_root: str = Field(
        default=".orchestrator/checkpoints",
        description="shared checkpoint directory, or s3://bucket/prefix for S3-compatible object storage",
    )
    s3_endpoint_url: str | None = Field(
        default=None, description="S3 endpoint (MinIO, SeaweedFS, Ceph...); unset: AWS_ENDPOINT_URL or AWS"
    )
    s3_region: str | None = Field(default=None, description="S3 region; unset: AWS_REGION or the profile's")
    s3_access_key_id: str | None = Field(
        default=None, description="S3 access key; unset: boto3's chain (AWS_ACCESS_KEY_ID, profile, role)"
    )
    s3_secret_access_key: SecretStr | None = Field(
        default=None, description="S3 secret key; unset: boto3's chain (AWS_SECRET_ACCESS_KEY, profile, role)"
    )
    s3_profile: str | None = Field(default=None, description="AWS profile for S3; unset: AWS_PROFILE")
    s3_retry_timeout: float = Field(
        default=20.0,
        gt=0,
        description="seconds an S3 checkpoint request is retried (with backoff) while the store is "
        "unreachable or answers 5xx, before the operation fails",
    )
    state_dir: Path = Field(default=Path(".orchestrator"), description="local files of the embedded cluster")
    heartbeat_interval: float = Field(default=1.0, gt=0, description="seconds between heartbeats")
    lease_ttl: float = Field(default=5.0, gt=0, description="seconds a lease lives unrenewed")
    claim_timeout: float = Field(
        default=10.0,
        gt=0,
        description="seconds a dispatched attempt may wait unclaimed on an idle queue",
    )
    scheduler_tick: float = Field(default=0.25, gt=0, description="seconds between liveness checks")
    max_restarts: int = Field(default=5, ge=0, description="node-loss resubmissions per run")
    metrics_port: int = Field(default=9808, ge=0, le=65535, description="scheduler /metrics port")
    secret_key: SecretStr | None = Field(
        default=None, description="key encrypting sensitive variables in checkpoints"
    )
    submit_key: SecretStr | None = Field(
        default=None, description="HMAC key every submission must be signed with"
    )
    ui_token: SecretStr | None = Field(
        default=None,
        description="token that allows cancel and resume from the web UI; unset: the UI only shows",
    )
    task_modules: str = Field(
        default="", description="comma-separated import roots python tasks may use; empty: any"
    )
    allow_shell: bool = Field(default=True, description="false refuses shell tasks")
    keep_checkpoints: bool = Field(default=False, description="keep a run's checkpoint after it succeeded")
    require_deployed: bool = Field(
        default=False, description="refuse inline packages: only deployed packages, submitted by name, run"
    )
    retention_days: float = Field(
        default=30.0,
        ge=0,
        description="the schedulers' daily purge removes runs finished longer ago than this; 0: never",
    )
    schedule_grace: float = Field(
        default=60.0,
        gt=0,
        description="seconds a schedule's slot may fire late and still count as on time (not missed)",
    )
    checkpoint_timeout: float = Field(
        default=30.0,
        gt=0,
        description="seconds a checkpoint store operation may take on a worker before its attempt is "
        "given up as lost (a hung NFS mount, a stalled disk) and the run resumed elsewhere",
    )
    log_json: bool = Field(default=False, description="structured JSON log lines")
    log_level: str = Field(default="INFO", description="logging level")

    @field_validator("checkpoint_root", mode="before")
    @classmethod
    def _root_as_text(cls, value: Any) -> Any:
        """A path object is accepted too; a root is text because ``s3://`` must keep its ``//``."""
        return str(value) if isinstance(value, Path) else value

    def s3_options(self) -> S3Options:
        """How the S3 checkpoint store reaches its bucket (every unset part: boto3's AWS chain)."""
        secret = self.s3_secret_access_key
        return S3Options(
            endpoint_url=self.s3_endpoint_url,
            region=self.s3_region,
            access_key_id=self.s3_access_key_id,
            secret_access_key=secret.get_secret_value() if secret else None,
            profile=self.s3_profile,
            retry_timeout=self.s3_retry_timeout,
        )

    @property
    def task_module_roots(self) -> tuple[str, ...]:
        return tuple(root.strip() for root in self.task_modules.split(",") if root.strip())

    def secret(self) -> str | None:
        return self.secret_key.get_secret_value() if self.secret_key else None

    def ui_secret(self) -> str | None:
        """The web UI's token; an empty value counts as unset."""
        return self.ui_token.get_secret_value() or None if self.ui_token else None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings()
