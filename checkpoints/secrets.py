"""Encryption of sensitive variables before they reach a checkpoint.

With no key configured a sensitive variable is simply left out of the
checkpoint (a resumed run must be given it again); with a key it is stored as
a Fernet token (AES-128-CBC + HMAC-SHA256), never in clear text.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from cryptography.fernet import Fernet, InvalidToken

from checkpoints.errors import CheckpointError


class SecretBox:
    """Encrypts and decrypts JSON values with a key derived from ``ORCHESTRATOR_SECRET_KEY``."""

    def __init__(self, secret_key: str) -> None:
        if not secret_key:
            raise ValueError("secret key must not be empty")
        derived = hashlib.sha256(b"orchestrator-checkpoint-v1:" + secret_key.encode()).digest()
        self._fernet = Fernet(base64.urlsafe_b64encode(derived))

    def encrypt(self, value: Any) -> str:
        return self._fernet.encrypt(json.dumps(value).encode()).decode("ascii")

    def decrypt(self, name: str, token: str) -> Any:
        try:
            return json.loads(self._fernet.decrypt(token.encode("ascii")))
        except (InvalidToken, ValueError) as exc:
            raise CheckpointError(
                f"cannot decrypt sensitive variable {name!r} from the checkpoint: "
                "ORCHESTRATOR_SECRET_KEY differs from the key it was written with"
            ) from exc
