"""Kept for compatibility: :class:`PackageBuilder` lives in :mod:`orchestrator.packages.builder`.

``from orchestrator.builder import PackageBuilder`` keeps working; new code
imports it from :mod:`orchestrator.packages`.
"""

from orchestrator.packages.builder import PackageBuilder

__all__ = ["PackageBuilder"]
