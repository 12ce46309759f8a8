"""Validation of the names that become path components of a checkpoint.

A run id or package name reaches the filesystem only after it matched one of
these patterns, so neither can traverse out of the checkpoint root.
"""

from __future__ import annotations

import re

from checkpoints.errors import InvalidIdentifier

PACKAGE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def validate_package_name(name: object) -> str:
    """Return ``name`` if it is a valid package name, else raise :class:`InvalidIdentifier`."""
    if not isinstance(name, str) or not PACKAGE_NAME.fullmatch(name):
        raise InvalidIdentifier(f"invalid package name {_shown(name)}: expected [a-z0-9][a-z0-9_-]{{0,63}}")
    return name


def validate_run_id(run_id: object) -> str:
    """Return ``run_id`` if it is a valid run id, else raise :class:`InvalidIdentifier`."""
    if not isinstance(run_id, str) or not RUN_ID.fullmatch(run_id):
        raise InvalidIdentifier(
            f"invalid run id {_shown(run_id)}: expected 1-128 characters of [A-Za-z0-9_-], "
            "starting with a letter or digit"
        )
    return run_id
