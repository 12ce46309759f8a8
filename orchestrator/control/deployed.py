"""Submissions of deployed packages: a name (and a version) resolved to its definition in the catalog.

The scheduler resolves every submission here before it records a run: an
inline definition is parsed as before (and refused when
``ORCHESTRATOR_REQUIRE_DEPLOYED`` is set); a name is looked up in the catalog
(the latest version unless ``version`` is given), and the variables are checked
against that version, since a foreign producer has not checked them. Sensitive
values that arrive in clear are encrypted before they are stored when
``ORCHESTRATOR_SECRET_KEY`` is set, as the Python client does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from checkpoints import SecretBox, validate_package_name
from orchestrator.control.messages import SubmitMessage
from orchestrator.errors import SubmissionRefused
from orchestrator.packages.model import Package
from orchestrator.packages.validation import parse_package
from orchestrator.packages.variables import missing_required, resolve
from orchestrator.runtime.settings import Settings
from orchestrator.state.catalog import Catalog, Deployed
from orchestrator.state.repository import Repository


@dataclass(frozen=True)
class Resolved:
    """What a run is created from: the package, its catalog version (None inline), its variables
    as stored on the run (``{"values": ..., "secrets": ...}``)."""

    package: Package
    version: int | None
    variables: dict[str, Any]


def seal(package: Package, values: Mapping[str, Any], secret_key: str | None) -> dict[str, Any]:
    """The stored form of ``values``: sensitive ones encrypted apart when there is a key."""
    plain = dict(values)
    secrets: dict[str, str] = {}
    if secret_key is not None:
        box = SecretBox(secret_key)
        sensitive = [name for name, declared in package.variables.items() if declared.sensitive]
        secrets = {name: box.encrypt(plain.pop(name)) for name in sensitive if name in plain}
    return {"values": plain, "secrets": secrets}


def load_deployed(repository: Repository, name: str, version: int | None) -> tuple[Deployed, Package]:
    """The catalog entry and the parsed package of ``name`` (the latest version, or ``version``)."""
    catalog = Catalog(repository.sessions)
    deployed = catalog.get(validate_package_name(name), version)
    definition = catalog.definition(deployed)
    return deployed, parse_package(definition, source=f"package {name} v{deployed.version}")


def resolve_submission(message: SubmitMessage, repository: Repository, settings: Settings) -> Resolved:
    """The package and variables a submission runs; :class:`SubmissionRefused` when it may not."""
    if isinstance(message.package, dict):
        if settings.require_deployed:
            raise SubmissionRefused(
                "inline package refused: ORCHESTRATOR_REQUIRE_DEPLOYED is set; deploy it with "
                "`orchestrator deploy FILE` and submit it by name"
            )
        if message.version is not None:
            raise SubmissionRefused("a version is given only with a deployed package's name")
        package = parse_package(message.package, source=f"submission {message.run_id}")
        return Resolved(package, None, {"values": message.variables, "secrets": message.secrets})
    deployed, package = load_deployed(repository, message.package, message.version)
    unknown = sorted(name for name in message.secrets if name not in package.variables)
    if unknown:
        raise SubmissionRefused(f"encrypted values for undeclared variable(s): {', '.join(unknown)}")
    # The scheduler's environment is no source of variables (ORCHESTRATOR_VAR_* belongs to clients).
    values = resolve(package, message.variables, environ={})
    missing_required(package, {**values, **dict.fromkeys(message.secrets)})
    stored = seal(package, values, settings.secret())
    stored["secrets"].update(message.secrets)
    return Resolved(package, deployed.version, stored)
