"""The submission message on the control queue, and its signature.

Any Celery producer can submit: the task ``orchestrator.submit`` on queue
``orchestrator.control`` with one keyword argument, ``payload``, holding a
:class:`SubmitMessage` as JSON. ``package`` is either a deployed package's name
(with ``version``, or the latest version runs) or a whole definition inline
(refused when ``ORCHESTRATOR_REQUIRE_DEPLOYED`` is set). With
``ORCHESTRATOR_SUBMIT_KEY`` set, the payload carries ``signature``: :func:`sign`
of the rest of it. The README shows the message.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from checkpoints import validate_package_name, validate_run_id
from checkpoints.format import canonical_json


class SubmitMessage(BaseModel):
    """The body of a submission (see :class:`orchestrator.control.client.Client`)."""

    model_config = ConfigDict(extra="forbid")

    run_id: str
    package: dict[str, Any] | str
    version: int | None = Field(default=None, ge=1)
    variables: dict[str, Any] = Field(default_factory=dict)
    secrets: dict[str, str] = Field(default_factory=dict)
    idempotency_key: str | None = Field(default=None, max_length=255)
    signature: str | None = None

    @field_validator("run_id")
    @classmethod
    def _safe(cls, value: str) -> str:
        return validate_run_id(value)

    @field_validator("package")
    @classmethod
    def _name(cls, value: dict[str, Any] | str) -> dict[str, Any] | str:
        return validate_package_name(value) if isinstance(value, str) else value


def sign(body: dict[str, Any], key: str) -> str:
    """HMAC-SHA256 of the canonical JSON of ``body`` without its signature."""
    unsigned = {k: v for k, v in body.items() if k != "signature"}
    return hmac.new(key.encode(), canonical_json(unsigned), hashlib.sha256).hexdigest()
