"""Masking of sensitive values in text that leaves the process (logs, errors, events)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

MASK = "***"


class Masker:
    """Replaces every occurrence of the given secret values with ``***``."""

    def __init__(self, secrets: Iterable[Any] = ()) -> None:
        texts = {value if isinstance(value, str) else json.dumps(value) for value in secrets}
        # Longest first, so that a secret containing another is masked whole.
        self._texts = sorted((t for t in texts if t), key=len, reverse=True)

    def __bool__(self) -> bool:
        return bool(self._texts)

    def __call__(self, text: str) -> str:
        for secret in self._texts:
            text = text.replace(secret, MASK)
        return text
