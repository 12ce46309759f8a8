"""The package catalog in SQL: validated definitions deployed as numbered versions.

``orchestrator deploy FILE`` records a package as version 1, 2, ... of its
name; a run submitted by name runs a version of the catalog (the latest unless
one is named) and records it. Deploying the definition the latest version
already has changes nothing. The definitions themselves are the rows of
``packages`` (shared with inline submissions); versions only point at them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.errors import PackageNotDeployed
from orchestrator.packages.model import Package
from orchestrator.state.models import Package as PackageRow
from orchestrator.state.models import PackageVersion
from orchestrator.state.repository import store_definition

DEPLOY_TRIES = 5  # concurrent deploys of one name race for the next number; the loser retries


@dataclass(frozen=True)
class Deployed:
    """One version of the catalog."""

    name: str
    version: int
    definition_hash: str
    deployed_at: datetime
    description: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "definition_hash": self.definition_hash,
            "deployed_at": self.deployed_at.isoformat(),
            "description": self.description,
        }


class Catalog:
    """Reads and writes of the catalog, one short transaction each."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def deploy(self, package: Package) -> tuple[Deployed, bool]:
        """Record ``package`` as the next version of its name; return it and whether it is new.

        When the latest version already has this definition, nothing is recorded.
        """
        for _ in range(DEPLOY_TRIES - 1):
            try:
                return self._deploy(package)
            except IntegrityError:
                continue  # another deploy of the same name took the number: count again
        return self._deploy(package)

    def _deploy(self, package: Package) -> tuple[Deployed, bool]:
        digest = package.definition_hash
        with self.sessions.begin() as session:
            latest = self._latest(session, package.name)
            if latest is not None and latest.definition_hash == digest:
                return self._deployed(latest, package.description), False
            store_definition(session, package)
            row = PackageVersion(
                name=package.name, version=(latest.version if latest else 0) + 1, definition_hash=digest
            )
            session.add(row)
            session.flush()
            return self._deployed(row, package.description), True

    def get(self, name: str, version: int | None = None) -> Deployed:
        """The named version, or the latest; :class:`PackageNotDeployed` when there is none."""
        with self.sessions() as session:
            if version is None:
                row = self._latest(session, name)
            else:
                row = session.get(PackageVersion, (name, version))
            if row is None:
                which = "is not deployed" if version is None else f"has no version {version}"
                raise PackageNotDeployed(f"package {name!r} {which} (deploy with `orchestrator deploy FILE`)")
            return self._deployed(row, self._description(session, row))

    def definition(self, deployed: Deployed) -> dict[str, Any]:
        """The package definition of a deployed version."""
        with self.sessions() as session:
            row = session.get(PackageRow, (deployed.name, deployed.definition_hash))
            if row is None:  # the foreign key makes this impossible short of manual deletion
                raise PackageNotDeployed(
                    f"the definition of {deployed.name!r} v{deployed.version} is missing"
                )
            return dict(row.definition)

    def latest_versions(self) -> list[Deployed]:
        """The latest version of every deployed package, by name."""
        with self.sessions() as session:
            latest = (
                select(PackageVersion.name, func.max(PackageVersion.version).label("version"))
                .group_by(PackageVersion.name)
                .subquery()
            )
            rows = session.execute(
                select(PackageVersion)
                .join(
                    latest,
                    (PackageVersion.name == latest.c.name) & (PackageVersion.version == latest.c.version),
                )
                .order_by(PackageVersion.name)
            ).scalars()
            return [self._deployed(row, self._description(session, row)) for row in rows]

    def history(self, name: str) -> list[Deployed]:
        """Every version of ``name``, newest first; :class:`PackageNotDeployed` when there is none."""
        with self.sessions() as session:
            rows = list(
                session.execute(
                    select(PackageVersion)
                    .where(PackageVersion.name == name)
                    .order_by(PackageVersion.version.desc())
                ).scalars()
            )
            if not rows:
                raise PackageNotDeployed(f"package {name!r} was never deployed")
            return [self._deployed(row, self._description(session, row)) for row in rows]

    @staticmethod
    def _latest(session: Session, name: str) -> PackageVersion | None:
        return session.execute(
            select(PackageVersion)
            .where(PackageVersion.name == name)
            .order_by(PackageVersion.version.desc())
            .limit(1)
        ).scalar_one_or_none()

    @staticmethod
    def _description(session: Session, row: PackageVersion) -> str:
        found = session.get(PackageRow, (row.name, row.definition_hash))
        return str(found.definition.get("description", "")) if found is not None else ""

    @staticmethod
    def _deployed(row: PackageVersion, description: str) -> Deployed:
        return Deployed(row.name, row.version, row.definition_hash, row.deployed_at, description)
